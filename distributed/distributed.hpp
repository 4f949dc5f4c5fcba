#pragma once
/// kiln::distributed in one include: the process group, the collectives, DDP and ZeRO-1.
///   #include <kiln/distributed/distributed.hpp>
///   kiln::distributed::InitGuard guard;
///   kiln::distributed::all_reduce(t, kiln::distributed::ReduceOp::Avg);
#include "collectives.hpp"
#include "ddp.hpp"
#include "process_group.hpp"
#include "zero.hpp"
