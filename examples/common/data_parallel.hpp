#pragma once
/// Data-parallel runs of the examples. The same program runs as one process or under mpirun:
///   mpirun -np 4 build/examples/charlm --threads 1 ...      (add --allow-run-as-root
///                                                            --oversubscribe as root/in containers)
/// Every rank draws the same global batch (the same seeded generator) and trains on its rows
/// (rank r takes rows r, r + N, ...); DDP averages the gradients, so the N processes train the
/// one-process model on the same global batches. Only rank 0 prints and writes files.
///
///   int main(int argc, char** argv) {
///     examples::DataParallel dp;                       // before anything prints
///     ...
///     return dp.exit(examples::run(app, argc, argv, [&] {
///       dp.rank0_writes(flags);                        // the other ranks write no files
///       dp.wrap(*model);                               // after the model is built (and resumed)
///       auto [x, y, weight] = dp.share(x_global, y_global);
///       Tensor loss = cross_entropy(model(x), y) * weight;
///       ... loss.backward(); opt.step(); progress.step(step, fmt::format("{}", dp.global_mean(loss)));
///     }));
///   }
#include <cstdio>
#include <kiln/kiln.hpp>
#include <memory>
#include <tuple>
#include <utility>

#include "common.hpp"

namespace examples {

class DataParallel {
 public:
  DataParallel() {
    kiln::distributed::init();  // under mpirun: this process's rank; otherwise a world of one
    rank_ = kiln::distributed::rank();
    world_ = kiln::distributed::world_size();
    if (rank_ != 0 && !std::freopen("/dev/null", "w", stdout)) std::fclose(stdout);  // rank 0 prints
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }

  /// Only rank 0 writes files: the other ranks forget --out (so they write nothing).
  void rank0_writes(Flags& flags) const {
    if (rank_ != 0) flags.out.clear();
  }

  /// Averages `model`'s gradients across the ranks from now on (and gives every rank rank 0's
  /// weights). Nothing with one process.
  void wrap(const kiln::nn::Module& model) {
    if (world_ > 1) ddp_ = std::make_unique<kiln::distributed::DistributedDataParallel>(model);
  }

  /// This rank's rows of a global batch (rows r, r + N, ...), and the factor for its mean loss
  /// that makes the ranks' average the global batch's mean (rows_here * N / rows).
  std::tuple<kiln::Tensor, kiln::Tensor, double> share(const kiln::Tensor& x, const kiln::Tensor& y) const {
    if (world_ == 1) return {x, y, 1.0};
    const std::int64_t rows = x.size(0);
    if (rows < world_)
      throw UsageError(fmt::format("--batch {} is smaller than the number of processes ({})", rows, world_));
    kiln::Tensor idx = kiln::arange(rank_, rows, world_, kiln::TensorOptions(kiln::kInt64).device(x.device()));
    const double weight = static_cast<double>(idx.numel() * world_) / static_cast<double>(rows);
    return {kiln::index_select(x, 0, idx), kiln::index_select(y, 0, idx), weight};
  }

  std::tuple<kiln::Tensor, kiln::Tensor, double> share(const std::pair<kiln::Tensor, kiln::Tensor>& xy) const {
    return share(xy.first, xy.second);
  }

  /// The ranks' average of a (weighted) loss: the global batch's loss. Collective.
  double global_mean(const kiln::Tensor& loss) const {
    if (world_ == 1) return loss.item<double>();
    kiln::Tensor t = loss.detach().clone();
    kiln::distributed::all_reduce(t, kiln::distributed::ReduceOp::Avg);
    return t.item<double>();
  }

  /// The program's exit: a failure on any rank ends the whole job (the others may be waiting for
  /// it in a collective); success shuts the process group down.
  int exit(int rc) {
    ddp_.reset();
    std::fflush(stdout);
    std::fflush(stderr);
    if (rc != 0 && world_ > 1) kiln::distributed::abort(rc);
    kiln::distributed::finalize();
    return rc;
  }

 private:
  int rank_ = 0, world_ = 1;
  std::unique_ptr<kiln::distributed::DistributedDataParallel> ddp_;
};

}  // namespace examples
