#pragma once
/// kiln::distributed in one include: the process group and the collectives.
///   #include <kiln/distributed/distributed.hpp>
///   kiln::distributed::InitGuard guard;
///   kiln::distributed::all_reduce(t, kiln::distributed::ReduceOp::Avg);
#include "collectives.hpp"
#include "process_group.hpp"
