#pragma once
// Internal to distributed/ (DDP and ZeRO-1): checking that every rank holds the same model.
#include <string>
#include <vector>

#include "../core/tensor.hpp"
#include "process_group.hpp"

namespace kiln::distributed::detail {

struct ReplicaEntry {
  std::string kind;  // "parameter", "buffer", ...
  std::string name;
  Tensor tensor;
};

/// Collective over `group`: every rank must pass entries of the same kinds, names, dtypes and
/// shapes in the same order. Otherwise a kiln::Error on every rank, e.g. "[op] the ranks' models
/// differ at entry 3: rank 0 has parameter 'fc.weight' float32 (4, 3); rank 1 has parameter
/// 'fc.weight' float32 (5, 3)" (at most a few differing ranks listed).
void check_replicas(const char* op, const std::vector<ReplicaEntry>& entries, const Group& group);

}  // namespace kiln::distributed::detail
