// kiln::distributed in one process without mpirun (the world of one): every collective keeps
// its definition for one rank, bad input still fails, and the ranks' signature comparison
// (what the MPI path runs before each collective) names the disagreeing ranks and values.
// Runs across processes: tests/distributed/mpi_tests.cc.
#include "../../distributed/runtime.hpp"
#include "test_util.hpp"

namespace dist = kiln::distributed;
using dist::ReduceOp;
using kiln::Tensor;

TEST_CASE("distributed: calls before init are a kiln::Error") {
  // CTest runs each case in a process of its own, where nothing has called init() yet.
  if (dist::is_initialized()) return;
  CHECK(kt::error_of([] { dist::rank(); }) == "[distributed::rank] kiln::distributed::init() has not been called");
  CHECK(kt::error_of([] { dist::all_reduce(kiln::ones({2})); }) ==
        "[all_reduce] kiln::distributed::init() has not been called");
}

TEST_CASE("distributed: a world of one process") {
  dist::init();
  dist::init();  // again: nothing happens
  REQUIRE(dist::is_initialized());
  CHECK(dist::rank() == 0);
  CHECK(dist::world_size() == 1);
  CHECK(dist::local_rank() == 0);
  CHECK(dist::local_world_size() == 1);
  CHECK(dist::backend_name() == "local");
  CHECK(dist::world().ranks() == std::vector<int>{0});

  Tensor t = kt::noncontig_leaf({3, 2});
  std::vector<double> before = t.to_vector<double>();
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
    dist::all_reduce(t, op);
    kt::expect_values(t, before, 0, 0);
  }
  dist::Work w = dist::broadcast_async(t, 0);
  w.wait();
  CHECK(w.is_completed());
  kt::expect_values(t, before, 0, 0);

  Tensor g = dist::all_gather(t);
  kt::expect_shape(g, {1, 3, 2});
  kt::expect_values(g, before, 0, 0);
  Tensor out = kiln::zeros({6});
  dist::reduce_scatter(out, kiln::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, kiln::kFloat32), ReduceOp::Max);
  kt::expect_values(out, {1, 2, 3, 4, 5, 6}, 0, 0);
  dist::barrier();

  dist::Group g1 = dist::new_group({0});
  CHECK(g1.rank() == 0);
  CHECK(g1.str() == "(0,)");
  CHECK(!dist::world().split(-1).is_member());
  CHECK(dist::world().split(3).size() == 1);
}

TEST_CASE("distributed: bad input in a world of one") {
  dist::init();
  CHECK(kt::error_of([] { dist::broadcast(kiln::ones({2}), 1); }) ==
        "[broadcast] root 1 is out of range for a group of 1 ranks");
  CHECK(kt::error_of([] { dist::send(kiln::ones({2}), 0); }) == "[send] dst 0 is this process's own rank");
  CHECK(kt::error_of([] { dist::recv(kiln::ones({2}), -1); }) ==
        "[recv] src -1 is out of range for a group of 1 ranks");
  CHECK(kt::error_of([] { dist::all_reduce(kiln::ones({2}, kiln::kBool), ReduceOp::Avg); }) ==
        "[all_reduce] avg needs a floating dtype, got bool");
  CHECK(kt::error_of([] { dist::reduce_scatter(kiln::zeros({2}), kiln::ones({3})); }) ==
        "[reduce_scatter] input (3,) has 3 elements, 1 ranks x output (2,) need 2");
  CHECK(kt::error_of([] { dist::new_group({0, 0}); }) == "[new_group] rank 0 is listed twice");
  CHECK(kt::error_of([] { dist::new_group({1}); }) == "[new_group] rank 1 is out of range for a world of 1 processes");
}

TEST_CASE("distributed: the ranks' signatures name what differs") {
  using namespace dist::detail;
  Tensor a = kiln::zeros({4, 3});
  Tensor b = kiln::zeros({4, 5}, kiln::kFloat64);
  Signature sa = make_signature(Kind::AllReduce, &a, ReduceOp::Avg);
  CHECK(describe(sa) == "all_reduce(avg) float32 (4, 3)");
  CHECK(describe(make_signature(Kind::Broadcast, &b, ReduceOp::Sum, 2)) == "broadcast(root 2) float64 (4, 5)");
  CHECK(describe(make_signature(Kind::Barrier, nullptr)) == "barrier");
  CHECK(signature_mismatch("all_reduce", {sa, sa, sa}).empty());
  CHECK(signature_mismatch("all_reduce", {sa, sa, make_signature(Kind::AllReduce, &b, ReduceOp::Avg)}) ==
        "[all_reduce] the ranks disagree: rank 0: all_reduce(avg) float32 (4, 3); rank 2: all_reduce(avg) float64 "
        "(4, 5)");
  // Sizes past the ones spelled out still count.
  Tensor c = kiln::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3});
  Tensor d = kiln::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 2});
  std::string msg =
      signature_mismatch("all_gather", {make_signature(Kind::AllGather, &c), make_signature(Kind::AllGather, &d)});
  CHECK(msg ==
        "[all_gather] the ranks disagree: rank 0: all_gather float32 (1, 1, 1, 1, 1, 1, 1, 1, 1, ...); rank 1: "
        "all_gather float32 (1, 1, 1, 1, 1, 1, 1, 1, 1, ...)");
}
