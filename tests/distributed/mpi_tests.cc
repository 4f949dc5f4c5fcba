// kiln::distributed under mpirun (tests/CMakeLists.txt runs it with -np 2 and -np 3, and once
// without mpirun as a world of one): every collective against its definition, computed here
// from what each rank contributed. With --fault=MODE it misbehaves on rank 1 instead, for the
// fault tests (they check that mpirun ends non-zero, quickly).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <kiln/kiln.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../test_util.hpp"

namespace dist = kiln::distributed;
using dist::ReduceOp;
using kiln::DType;
using kiln::Shape;
using kiln::Tensor;

namespace {

const DType kDTypes[] = {kiln::kFloat32, kiln::kFloat64, kiln::kInt64, kiln::kBool, kiln::kBFloat16, kiln::kFloat16};

/// Rank r's element i: small integers (exact in every dtype and every sum), int64 beyond 2^32.
double value(int r, std::int64_t i, DType d, int salt = 0) {
  if (d == kiln::kBool) return (r + i + salt) % 3 == 0 ? 1 : 0;
  double v = static_cast<double>(((r + 1) * 3 + i * 7 + salt) % 11 - 5);
  return d == kiln::kInt64 ? v + static_cast<double>(std::int64_t{r} << 33) : v;
}

/// A tensor of `shape` holding rank r's values; `strided` makes it a transposed (non-contiguous) view.
Tensor make(const Shape& shape, DType d, int r, bool strided = false, int salt = 0) {
  std::int64_t n = kiln::numel_of(shape);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = value(r, i, d, salt);
  Tensor t = kiln::tensor(v, {n}).reshape(shape).to(d);  // shape {} would mean (n,) to tensor()
  if (!strided) return t;
  // The same values seen through a transposed buffer: t == base.t(), and base.t() is strided.
  Tensor base = t.t().contiguous();
  Tensor view = base.t();
  REQUIRE(!view.is_contiguous());
  return view;
}

double reduce(ReduceOp op, DType d, const std::vector<double>& xs) {
  double acc = xs[0];
  for (std::size_t k = 1; k < xs.size(); ++k) {
    double x = xs[k];
    if (d == kiln::kBool) acc = op == ReduceOp::Min ? (acc && x) : (acc || x);
    else if (op == ReduceOp::Max) acc = std::max(acc, x);
    else if (op == ReduceOp::Min) acc = std::min(acc, x);
    else acc += x;
  }
  return op == ReduceOp::Avg ? acc / static_cast<double>(xs.size()) : acc;
}

void expect(const Tensor& t, const std::vector<double>& want, DType d) {
  std::vector<double> got = t.to_vector<double>();
  REQUIRE(got.size() == want.size());
  // 16-bit floats: the values and sums are small integers (exact); only avg rounds, to 8 or 11 bits.
  double tol = d == kiln::kFloat32    ? 1e-6
               : d == kiln::kFloat64  ? 1e-14
               : d == kiln::kBFloat16 ? 4e-3
               : d == kiln::kFloat16  ? 5e-4
                                      : 0;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = got.size(); i-- > 0;)
    if (!(std::abs(got[i] - want[i]) <= tol * std::max(1.0, std::abs(want[i])))) ++bad, first = i;
  INFO(bad << " elements differ on rank " << dist::rank() << "; the first, " << first << ": got "
           << (bad ? got[first] : 0) << ", expected " << (bad ? want[first] : 0));
  CHECK(bad == 0);
}

const std::vector<Shape> kShapes = {{}, {0}, {1}, {5}, {3, 4}, {2, 0, 3}, {70000}};

}  // namespace

TEST_CASE("process group facts") {
  const char* env = std::getenv("OMPI_COMM_WORLD_SIZE");
  CHECK(dist::world_size() == (env ? std::atoi(env) : 1));
  CHECK(dist::rank() >= 0);
  CHECK(dist::rank() < dist::world_size());
  CHECK(dist::local_rank() == dist::rank());  // one machine
  CHECK(dist::local_world_size() == dist::world_size());
  CHECK(dist::backend_name() == (env ? "mpi" : "local"));
  CHECK(dist::world().size() == dist::world_size());
  CHECK(dist::world().rank() == dist::rank());
}

TEST_CASE("all_reduce against its definition") {
  const int n = dist::world_size(), me = dist::rank();
  for (DType d : kDTypes)
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
      if (op == ReduceOp::Avg && !kiln::is_floating(d)) continue;
      for (const Shape& s : kShapes)
        for (bool strided : {false, true}) {
          if (strided && s.size() != 2) continue;
          INFO(kiln::dtype_name(d) << " " << dist::reduce_op_name(op) << " " << kiln::shape_str(s));
          Tensor t = make(s, d, me, strided);
          dist::all_reduce(t, op);
          std::vector<double> want(static_cast<std::size_t>(t.numel()));
          for (std::size_t i = 0; i < want.size(); ++i) {
            std::vector<double> xs;
            for (int r = 0; r < n; ++r) xs.push_back(value(r, static_cast<std::int64_t>(i), d));
            want[i] = reduce(op, d, xs);
          }
          expect(t, want, d);
          if (strided) CHECK(!t.is_contiguous());  // written through the view
        }
    }
}

TEST_CASE("all_reduce gives every rank the same bits") {
  // Rounding differs with the order of the additions; ranks that got different sums would train
  // diverging replicas. Random float values, then every rank's result compared with rank 0's.
  for (DType d : {kiln::kFloat32, kiln::kFloat64, kiln::kBFloat16, kiln::kFloat16}) {
    kiln::Generator g(1234 + static_cast<std::uint64_t>(dist::rank()));
    Tensor t = (kiln::randn({100003}, kiln::kFloat64, &g) * 100.0).to(d);
    dist::all_reduce(t, ReduceOp::Avg);
    Tensor all = dist::all_gather(t);
    for (int r = 1; r < dist::world_size(); ++r) CHECK(kiln::equal(all.select(0, r), all.select(0, 0)));
  }
}

TEST_CASE("broadcast from every root") {
  const int n = dist::world_size(), me = dist::rank();
  for (DType d : kDTypes)
    for (int root = 0; root < n; ++root)
      for (const Shape& s : {Shape{}, Shape{0}, Shape{4, 3}, Shape{9}}) {
        Tensor t = make(s, d, me, s.size() == 2);
        dist::broadcast(t, root);
        expect(t, make(s, d, root).to_vector<double>(), d);
      }
}

TEST_CASE("all_gather and reduce_scatter") {
  const int n = dist::world_size(), me = dist::rank();
  for (DType d : kDTypes)
    for (const Shape& s : {Shape{}, Shape{0}, Shape{3, 2}, Shape{7}}) {
      Tensor in = make(s, d, me, s.size() == 2);
      Tensor out = dist::all_gather(in);
      Shape os = s;
      os.insert(os.begin(), n);
      INFO("all_gather of " << kiln::shape_str(s) << " gave " << kiln::shape_str(out.shape()));
      CHECK(out.shape() == os);
      std::vector<double> want;
      for (int r = 0; r < n; ++r) {
        auto v = make(s, d, r).to_vector<double>();
        want.insert(want.end(), v.begin(), v.end());
      }
      expect(out, want, d);
      // Into a strided output of another shape with the same element count.
      Tensor wide = kiln::zeros({kiln::numel_of(os), 2}, d);
      dist::all_gather(wide.select(1, 1), in);
      expect(wide.select(1, 1), want, d);
      expect(wide.select(1, 0), std::vector<double>(want.size(), 0.0), d);

      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg}) {
        if (op == ReduceOp::Avg && !kiln::is_floating(d)) continue;
        Shape big = s;
        big.insert(big.begin(), n);
        Tensor src = make(big, d, me);
        Tensor mine = kiln::zeros(s, d);
        dist::reduce_scatter(mine, src, op);
        std::int64_t chunk = kiln::numel_of(s);
        std::vector<double> exp(static_cast<std::size_t>(chunk));
        for (std::int64_t i = 0; i < chunk; ++i) {
          std::vector<double> xs;
          for (int r = 0; r < n; ++r) xs.push_back(value(r, me * chunk + i, d));
          exp[static_cast<std::size_t>(i)] = reduce(op, d, xs);
        }
        expect(mine, exp, d);
      }
    }
}

TEST_CASE("barrier, send and recv around a ring") {
  const int n = dist::world_size(), me = dist::rank();
  dist::barrier();
  if (n < 2) return;
  for (DType d : kDTypes) {
    Tensor out = make({4, 3}, d, me, true);
    Tensor in = kiln::zeros({3, 4}, d).t();  // strided receive buffer
    dist::Work s = dist::send_async(out, (me + 1) % n, {}, 7);
    dist::recv(in, (me + n - 1) % n, {}, 7);
    s.wait();
    expect(in, make({4, 3}, d, (me + n - 1) % n).to_vector<double>(), d);
  }
}

TEST_CASE("async collectives overlap with work on another thread") {
  const int n = dist::world_size(), me = dist::rank();
  std::vector<Tensor> ts;
  std::vector<dist::Work> ws;
  for (int k = 0; k < 6; ++k) {
    ts.push_back(make({1000 + k}, kiln::kFloat64, me, false, k));
    ws.push_back(dist::all_reduce_async(ts.back()));
  }
  // Compute while they run, then wait in reverse order.
  Tensor a = kiln::ones({64, 64});
  for (int k = 0; k < 5; ++k) a = a.matmul(a) / 64.0f;
  for (int k = 5; k >= 0; --k) {
    ws[static_cast<std::size_t>(k)].wait();
    CHECK(ws[static_cast<std::size_t>(k)].is_completed());
    std::vector<double> want(static_cast<std::size_t>(1000 + k));
    for (std::size_t i = 0; i < want.size(); ++i)
      for (int r = 0; r < n; ++r) want[i] += value(r, static_cast<std::int64_t>(i), kiln::kFloat64, k);
    expect(ts[static_cast<std::size_t>(k)], want, kiln::kFloat64);
  }
  // Issued from a second thread while this one computes (as DDP's gradient hooks do).
  Tensor t = make({256}, kiln::kFloat32, me);
  std::thread th([&] { dist::all_reduce(t, ReduceOp::Max); });
  Tensor b = kiln::ones({128, 128}).matmul(kiln::ones({128, 128}));
  th.join();
  CHECK(b.to_vector<float>()[0] == 128.0f);
  std::vector<double> want(256);
  for (std::size_t i = 0; i < want.size(); ++i) {
    std::vector<double> xs;
    for (int r = 0; r < n; ++r) xs.push_back(value(r, static_cast<std::int64_t>(i), kiln::kFloat32));
    want[i] = reduce(ReduceOp::Max, kiln::kFloat32, xs);
  }
  expect(t, want, kiln::kFloat32);
}

TEST_CASE("a rank waiting for a late peer does not hold a core") {
  // Rank 0 joins at once, the others 400 ms later. While rank 0's communication thread waits in
  // the collective (and its main thread in wait()), the process must stay nearly idle: a thread
  // polling MPI in a loop would burn the whole wait (CPU time ~ wall time). Under heavy outside
  // load a spinning thread gets less CPU, so this can only pass wrongly, never fail wrongly.
  const int n = dist::world_size(), me = dist::rank();
  if (n < 2) return;
  auto cpu_s = [] {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  };
  auto wall_s = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  for (bool large : {false, true}) {  // one signature-sized and one multi-fragment buffer
    Tensor t = kiln::ones({large ? 1 << 20 : 4});
    dist::barrier();
    if (me != 0) std::this_thread::sleep_for(std::chrono::milliseconds(400));
    const double c0 = cpu_s(), w0 = wall_s();
    dist::all_reduce(t);
    const double cpu = cpu_s() - c0, wall = wall_s() - w0;
    CHECK(t.to_vector<float>()[0] == static_cast<float>(n));
    if (me == 0) {
      CHECK(wall > 0.3);
      CHECK(cpu < 0.1 * wall);
    }
  }
}

TEST_CASE("sub-groups: new_group and split") {
  const int n = dist::world_size(), me = dist::rank();
  if (n >= 2) {
    dist::Group ends = dist::new_group({n - 1, 0});  // group rank 0 is world rank n-1
    CHECK(ends.size() == 2);
    if (me == 0 || me == n - 1) {
      CHECK(ends.rank() == (me == n - 1 ? 0 : 1));
      Tensor t = make({5}, kiln::kFloat64, me);
      dist::all_reduce(t, ReduceOp::Sum, ends);
      std::vector<double> want(5);
      for (std::size_t i = 0; i < 5; ++i)
        want[i] = value(0, static_cast<std::int64_t>(i), kiln::kFloat64) +
                  value(n - 1, static_cast<std::int64_t>(i), kiln::kFloat64);
      expect(t, want, kiln::kFloat64);
      Tensor b = make({3}, kiln::kInt64, me);
      dist::broadcast(b, 0, ends);
      expect(b, make({3}, kiln::kInt64, n - 1).to_vector<double>(), kiln::kInt64);
    } else {
      CHECK(!ends.is_member());
      CHECK(kt::error_of([&] {
              dist::all_reduce(kiln::ones({2}), ReduceOp::Sum, ends);
            }).find("is not a member of group") != std::string::npos);
    }
  }
  // Split by parity, ordered by descending world rank.
  dist::Group half = dist::world().split(me % 2, -me);
  std::vector<int> members;
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  CHECK(half.ranks() == members);
  Tensor t = make({4}, kiln::kFloat32, me);
  dist::all_reduce(t, ReduceOp::Sum, half);
  std::vector<double> want(4);
  for (std::size_t i = 0; i < 4; ++i)
    for (int r : members) want[i] += value(r, static_cast<std::int64_t>(i), kiln::kFloat32);
  expect(t, want, kiln::kFloat32);
  // A negative color joins no group.
  dist::Group none = dist::world().split(me == 0 ? -1 : 0);
  CHECK(none.is_member() == (me != 0));
  if (n >= 2) {  // different lists: every rank learns it
    std::vector<int> list = me == 0 ? std::vector<int>{0} : std::vector<int>{0, 1};
    CHECK(kt::error_of([&] {
            dist::new_group(list);
          }).find("[new_group] the ranks disagree: rank 0: new_group of 1 ranks (0)") != std::string::npos);
  }
}

TEST_CASE("bad input is a kiln::Error naming the op and the values") {
  const int n = dist::world_size(), me = dist::rank();
  CHECK(kt::error_of([&] { dist::broadcast(kiln::ones({2}), n); }) ==
        "[broadcast] root " + std::to_string(n) + " is out of range for a group of " + std::to_string(n) + " ranks");
  CHECK(kt::error_of([&] { dist::all_reduce(kiln::ones({2}, kiln::kInt64), ReduceOp::Avg); }) ==
        "[all_reduce] avg needs a floating dtype, got int64");
  CHECK(kt::error_of([&] {
          dist::all_gather(kiln::zeros({3}), kiln::ones({2}));
        }).find("[all_gather] output (3,) has 3 elements") == 0);
  CHECK(kt::error_of([&] { dist::all_gather(kiln::zeros({2 * n}, kiln::kInt64), kiln::ones({2})); }) ==
        "[all_gather] output is int64 but input is float32");
  CHECK(kt::error_of([&] { dist::all_reduce(kiln::ones({1}).expand({3})); }).find("has stride 0 in dim 0") !=
        std::string::npos);
  CHECK(kt::error_of([&] { dist::all_reduce(Tensor()); }) == "[all_reduce] tensor is an undefined tensor");
  CHECK(kt::error_of([&] { dist::send(kiln::ones({2}), me); }) ==
        "[send] dst " + std::to_string(me) + " is this process's own rank");
  if (n < 2) return;
  // Disagreements across ranks: every rank raises the same error, and the group stays usable.
  std::string shapes = kt::error_of([&] { dist::all_reduce(kiln::ones({me == 1 ? 4 : 3})); });
  CHECK(shapes.find("[all_reduce] the ranks disagree: rank 0: all_reduce(sum) float32 (3,); rank 1: all_reduce(sum) "
                    "float32 (4,)") == 0);
  std::string dtypes =
      kt::error_of([&] { dist::broadcast(kiln::ones({2}, me == 1 ? kiln::kFloat64 : kiln::kFloat32), 0); });
  CHECK(dtypes.find("rank 1: broadcast(root 0) float64 (2,)") != std::string::npos);
  std::string kinds = kt::error_of([&] {
    if (me == 1) dist::all_reduce(kiln::ones({2}), ReduceOp::Max);
    else dist::broadcast(kiln::ones({2}), 0);
  });
  CHECK(kinds.find("rank 0: broadcast(root 0) float32 (2,); rank 1: all_reduce(max) float32 (2,)") !=
        std::string::npos);
  Tensor ok = kiln::ones({3});
  dist::all_reduce(ok);
  expect(ok, std::vector<double>(3, n), kiln::kFloat32);
  // recv into a buffer of another size than what was sent.
  if (me == 0) {
    dist::send(kiln::ones({5}), 1);
    dist::send(kiln::ones({5}), 1);
  } else if (me == 1) {
    CHECK(kt::error_of([&] { dist::recv(kiln::zeros({4}), 0); }) ==
          "[recv] rank 0 sent more than the 4 float32 elements expected");
    CHECK(kt::error_of([&] { dist::recv(kiln::zeros({6}), 0); }) ==
          "[recv] rank 0 sent 5 float32 elements, 6 float32 expected");
  }
  // Another dtype of the same byte count: the message carries the sender's dtype.
  const std::vector<std::pair<Tensor, Tensor>> same_bytes = {
      {kiln::ones({3}, kiln::kBFloat16), kiln::zeros({3}, kiln::kFloat16)},
      {kiln::ones({3}, kiln::kFloat64), kiln::zeros({3}, kiln::kInt64)},
      {kiln::ones({2}, kiln::kFloat32), kiln::zeros({1}, kiln::kFloat64)}};
  for (const auto& [sent, into] : same_bytes) {
    if (me == 0) {
      dist::send(sent, 1);
      dist::send(sent, 1);
    } else if (me == 1) {
      CHECK(kt::error_of([&] { dist::recv(into, 0); }) ==
            fmt::format("[recv] rank 0 sent {} {} elements, {} {} expected", sent.numel(),
                        kiln::dtype_name(sent.dtype()), into.numel(), kiln::dtype_name(into.dtype())));
      Tensor right = kiln::zeros(sent.shape(), sent.dtype());  // the same message into its own dtype
      dist::recv(right, 0);
      CHECK(right.to_vector<double>() == std::vector<double>(static_cast<std::size_t>(sent.numel()), 1.0));
    }
  }
  dist::barrier();
}

TEST_CASE("CUDA tensors through NCCL") {
  if (!kiln::cuda::is_available() || !dist::is_built_with_nccl()) {
    MESSAGE("CUDA tests skipped: " << (kiln::cuda::is_available() ? "kiln was built without NCCL"
                                                                  : kiln::cuda::unavailable_reason()));
    return;
  }
  const int n = dist::world_size(), me = dist::rank();
  kiln::Device dev = kiln::Device::cuda(dist::local_rank() % kiln::cuda::device_count());
  for (DType d : kDTypes)
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
      if (op == ReduceOp::Avg && !kiln::is_floating(d)) continue;
      Tensor t = make({4, 3}, d, me, true).to(dev);
      dist::all_reduce(t, op);
      std::vector<double> want(12);
      for (std::size_t i = 0; i < want.size(); ++i) {
        std::vector<double> xs;
        for (int r = 0; r < n; ++r) xs.push_back(value(r, static_cast<std::int64_t>(i), d));
        want[i] = reduce(op, d, xs);
      }
      expect(t.to(kiln::Device::cpu()), want, d);
    }
  Tensor b = make({7}, kiln::kFloat32, me).to(dev);
  dist::broadcast(b, n - 1);
  expect(b.to(kiln::Device::cpu()), make({7}, kiln::kFloat32, n - 1).to_vector<double>(), kiln::kFloat32);
  Tensor g = dist::all_gather(make({2, 3}, kiln::kFloat64, me).to(dev));
  std::vector<double> want;
  for (int r = 0; r < n; ++r) {
    auto v = make({2, 3}, kiln::kFloat64, r).to_vector<double>();
    want.insert(want.end(), v.begin(), v.end());
  }
  expect(g.to(kiln::Device::cpu()), want, kiln::kFloat64);
  Tensor rs = kiln::zeros({3}, kiln::TensorOptions().dtype(kiln::kFloat64).device(dev));
  dist::reduce_scatter(rs, make({n, 3}, kiln::kFloat64, me).to(dev));
  std::vector<double> exp(3);
  for (std::size_t i = 0; i < 3; ++i)
    for (int r = 0; r < n; ++r) exp[i] += value(r, me * 3 + static_cast<std::int64_t>(i), kiln::kFloat64);
  expect(rs.to(kiln::Device::cpu()), exp, kiln::kFloat64);
}

namespace {
/// Rank 1 misbehaves after a barrier while the others wait for it in an all_reduce.
int fault(const std::string& mode) {
  dist::barrier();
  if (dist::rank() == 1) {
    if (mode == "throw") throw std::runtime_error("rank 1 fails on purpose");  // uncaught: std::terminate
    if (mode == "kill") std::raise(SIGKILL);
    if (mode == "exit") std::exit(3);  // without finalize
    if (mode == "finalize") {          // skips the all_reduce the others wait in
      dist::finalize();
      return 0;
    }
    if (mode == "guard") {
      try {
        dist::InitGuard guard;
        throw kiln::Error("rank 1 fails on purpose");
      } catch (const kiln::Error&) {
      }
    }
  }
  Tensor t = kiln::ones({4});
  dist::all_reduce(t);
  std::fprintf(stderr, "rank %d: the all_reduce returned although rank 1 never joined it\n", dist::rank());
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  dist::init();
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--fault=", 8) == 0) return fault(argv[i] + 8);
  doctest::Context ctx(argc, argv);
  int rc = ctx.run();
  dist::finalize();
  return rc;
}
