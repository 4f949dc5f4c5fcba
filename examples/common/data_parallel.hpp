#pragma once
/// Data-parallel runs of the examples. The same program runs as one process or under mpirun:
///   mpirun -np 4 build/examples/charlm --threads 1 ...      (add --allow-run-as-root
///                                                            --oversubscribe as root/in containers)
/// Every rank reads its share of each global batch (kiln::data::DistributedSampler: rank r takes
/// positions r, r + N, ... of the epoch's order, or of a global batch that every rank draws alike);
/// DDP averages the gradients, so the N processes train the one-process model on the same global
/// batches. Only rank 0 prints and writes files.
///
///   int main(int argc, char** argv) {
///     examples::DataParallel dp;                       // before anything prints
///     ...
///     return dp.exit(examples::run(app, argc, argv, [&] {
///       dp.rank0_writes(flags);                        // the other ranks write no files
///       dp.wrap(*model);                               // after the model is built (and resumed)
///       data::DataLoader loader(ds, data::DataLoaderOptions().batch_size(dp.rank_batch(flags.batch))
///                                       .sampler(dp.sampler(ds->size(), flags.seed)));  // a dataset, or
///       auto [x, y, weight] = dp.share(x_global, y_global);       // rows of a drawn global batch
///       Tensor loss = cross_entropy(model(x), y) * weight;
///       ... loss.backward(); opt.step(); progress.step(step, fmt::format("{}", dp.global_mean(loss)));
///     }));
///   }
#include <cstdio>
#include <functional>
#include <kiln/kiln.hpp>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

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

  /// This rank's sampler over a dataset of n examples: a new order per epoch (keyed by seed, the
  /// same on every rank), of which this rank reads a disjoint share of every global batch; the
  /// last n % N examples of an epoch are left out so that every rank runs the same steps.
  std::shared_ptr<kiln::data::DistributedSampler> sampler(std::int64_t n, std::uint64_t seed) const {
    return std::make_shared<kiln::data::DistributedSampler>(
        n, kiln::data::DistributedSamplerOptions().rank(rank_).world(world_).seed(seed).remainder(
               kiln::data::Remainder::Drop));
  }

  /// The batch each rank reads for a global --batch (which the number of processes must divide:
  /// the loader's batches have one size, so the ranks' shares of a global batch must be equal).
  std::int64_t rank_batch(std::int64_t global) const {
    if (global % world_ != 0) {
      const std::int64_t below = global / world_ * world_, above = below + world_;
      throw UsageError(fmt::format("--batch {} must be a multiple of the number of processes ({}): use {}", global,
                                   world_, below > 0 ? fmt::format("{} or {}", below, above) : std::to_string(above)));
    }
    return global / world_;
  }

  /// This rank's rows of a global batch that every rank drew alike (rows r, r + N, ...), and the
  /// factor for its mean loss that makes the ranks' average the global batch's mean
  /// (rows_here * N / rows).
  std::tuple<kiln::Tensor, kiln::Tensor, double> share(const kiln::Tensor& x, const kiln::Tensor& y) const {
    if (world_ == 1) return {x, y, 1.0};
    const std::int64_t rows = x.size(0);
    if (rows < world_)
      throw UsageError(fmt::format("--batch {} is smaller than the number of processes ({})", rows, world_));
    kiln::data::DistributedSampler mine(
        rows, kiln::data::DistributedSamplerOptions().rank(rank_).world(world_).shuffle(false).remainder(
                  kiln::data::Remainder::Uneven));
    kiln::Tensor idx = kiln::tensor(mine.indices(), {mine.size()}).to(x.device());
    const double weight = static_cast<double>(mine.size() * world_) / static_cast<double>(rows);
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

  /// The program's exit. A failure that every rank met alike (same exit code, same line: a bad
  /// flag, an uneven --batch) is printed once, by rank 0, and the ranks end together with its
  /// code. Any other failure is printed by each failing rank and ends the whole job at once (the
  /// others may be waiting for it in a collective). Success shuts the process group down.
  int exit(int rc) {
    ddp_.reset();
    std::fflush(stdout);
    if (rc != 0 && world_ > 1) {
      const std::string& line = held_error();
      if (!failed_alike(rc, line)) {
        fmt::print(stderr, "{}", line);
        std::fflush(stderr);
        kiln::distributed::abort(rc);
      }
      if (rank_ == 0) fmt::print(stderr, "{}", line);
    }
    std::fflush(stderr);
    kiln::distributed::finalize();
    return rc;
  }

 private:
  /// Whether every rank ends with this code and line. Collective; false when a rank is elsewhere
  /// (then the exchange meets its collective, and both sides get a kiln::Error).
  static bool failed_alike(int rc, const std::string& line) {
    try {
      const auto hash = static_cast<std::int64_t>(std::hash<std::string>{}(line) >> 1);
      const std::vector<std::int64_t> all =
          kiln::distributed::all_gather(kiln::tensor(std::vector<std::int64_t>{rc, hash})).to_vector<std::int64_t>();
      for (std::size_t i = 0; i < all.size(); i += 2)
        if (all[i] != rc || all[i + 1] != hash) return false;
      return true;
    } catch (const kiln::Error&) {
      return false;
    }
  }

  int rank_ = 0, world_ = 1;
  std::unique_ptr<kiln::distributed::DistributedDataParallel> ddp_;
};

}  // namespace examples
