// ZeRO-1: the partition of the parameters over the ranks, the local optimizer over the owned
// ones, the parameter all_gather after each step, and the state dict in the unsharded layout.
#include "zero.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "../autograd/grad_mode.hpp"
#include "../core/error.hpp"
#include "collectives.hpp"
#include "ddp_replicas.hpp"

namespace kiln::distributed {
namespace {

constexpr const char* kOp = "ZeroRedundancyOptimizer";

Tensor view_at(const Tensor& flat, const Tensor& like, std::int64_t offset) {
  return Tensor::make_view(flat, like.shape(), contiguous_strides(like.shape()), flat.offset() + offset);
}

// "state.<i>.<field>" -> (i, field); false for any other key.
bool parse_state_key(const std::string& key, std::size_t& index, std::string& field) {
  if (key.rfind("state.", 0) != 0) return false;
  const std::size_t dot = key.find('.', 6);
  if (dot == std::string::npos || dot == 6) return false;
  const std::string num = key.substr(6, dot - 6);
  if (!std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }) || num.size() > 18)
    return false;
  index = std::stoull(num);
  field = key.substr(dot + 1);
  return true;
}

// Text travels as int64 words (8 bytes each, zero padded).
Tensor text_to_words(const std::string& s) {
  std::vector<std::int64_t> words((s.size() + 7) / 8, 0);
  if (!s.empty()) std::memcpy(words.data(), s.data(), s.size());
  return tensor(words, {static_cast<std::int64_t>(words.size())});
}

}  // namespace

// One (dtype, device) class of parameters: rank r's owned ones packed in order into chunk r of
// `gathered` (chunk = the largest rank's element count).
struct ZeroRedundancyOptimizer::DTypeShard {
  std::vector<std::vector<std::size_t>> per_rank;
  std::size_t first = 0;  // a parameter of this kind
  std::int64_t chunk = 0;
  Tensor send, gathered;
};

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(std::vector<optim::ParamGroup> groups, const Factory& make,
                                                 Group group)
    : group_(std::move(group)) {
  KILN_CHECK(group_.is_member(), kOp, "this process (world rank {}) is not a member of the group {}", rank(),
             group_.str());
  KILN_CHECK(static_cast<bool>(make), kOp, "the optimizer factory is empty");
  std::vector<detail::ReplicaEntry> entries;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    group_sizes_.push_back(groups[g].params().size());
    for (std::size_t k = 0; k < groups[g].params().size(); ++k) {
      const Tensor& p = groups[g].params()[k];
      KILN_CHECK(p.defined(), kOp, "parameter {} of group {} is undefined", k, g);
      entries.push_back({"parameter", fmt::format("{} of group {}", k, g), p});
      params_.push_back(p);
    }
  }
  detail::check_replicas(kOp, entries, group_);

  // Greedy balance: largest first, each to the least loaded rank (the same on every rank).
  const int world = group_.size(), me = group_.rank();
  std::vector<std::size_t> order(params_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return params_[a].numel() > params_[b].numel(); });
  std::vector<std::int64_t> load(static_cast<std::size_t>(world), 0);
  owner_.assign(params_.size(), 0);
  for (std::size_t i : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner_[i] = r;
    load[static_cast<std::size_t>(r)] += params_[i].numel();
  }

  std::vector<optim::ParamGroup> shard;
  local_index_.assign(params_.size(), 0);
  std::size_t i = 0;
  for (auto& g : groups) {
    std::vector<Tensor> mine;
    for (const Tensor& p : g.params()) {
      if (owner_[i] == me) {
        local_index_[i] = owned_.size();
        owned_.push_back(i);
        mine.push_back(p);
      }
      ++i;
    }
    shard.push_back(g.has_options() ? optim::ParamGroup(std::move(mine), g.options())
                                    : optim::ParamGroup(std::move(mine)));
  }
  local_ = make(std::move(shard));
  KILN_CHECK(local_ != nullptr, kOp, "the optimizer factory returned null");
  set_local(*local_);  // a GradScaler refuses the shard alone
  const auto built = local_->parameters();
  KILN_CHECK(built.size() == owned_.size() && local_->param_groups().size() == groups.size(), kOp,
             "the factory must build the optimizer over the groups it is given ({} groups, {} parameters here), "
             "got {} groups and {} parameters",
             groups.size(), owned_.size(), local_->param_groups().size(), built.size());
  for (std::size_t k = 0; k < owned_.size(); ++k)
    KILN_CHECK(built[k].is_same(params_[owned_[k]]), kOp, "the factory's optimizer holds other parameters");

  // The all_gather layout per (dtype, device), in parameter order.
  std::map<std::pair<int, std::string>, std::shared_ptr<DTypeShard>> by_kind;
  for (std::size_t j = 0; j < params_.size(); ++j) {
    const Tensor& p = params_[j];
    auto& s = by_kind[{static_cast<int>(p.dtype()), p.device().str()}];
    if (!s) {
      s = std::make_shared<DTypeShard>();
      s->per_rank.resize(static_cast<std::size_t>(world));
      s->first = j;
      shards_.push_back(s);
    }
    s->per_rank[static_cast<std::size_t>(owner_[j])].push_back(j);
  }
  for (auto& s : shards_) {
    for (const auto& list : s->per_rank) {
      std::int64_t n = 0;
      for (std::size_t j : list) n += params_[j].numel();
      s->chunk = std::max(s->chunk, n);
    }
    const Tensor& like = params_[s->first];
    s->send = zeros({s->chunk}, TensorOptions(like.dtype()).device(like.device()));
    s->gathered = zeros({s->chunk * world}, TensorOptions(like.dtype()).device(like.device()));
  }
}

void ZeroRedundancyOptimizer::step() {
  local_->step();
  has_consolidated_ = false;
  const int world = group_.size(), me = group_.rank();
  if (world == 1) return;
  NoGradGuard ng;
  std::vector<Work> works;
  for (auto& s : shards_) {
    std::int64_t off = 0;
    for (std::size_t j : s->per_rank[static_cast<std::size_t>(me)]) {
      view_at(s->send, params_[j], off).copy_(params_[j]);
      off += params_[j].numel();
    }
    works.push_back(all_gather_async(s->gathered, s->send, group_));
  }
  for (std::size_t k = 0; k < shards_.size(); ++k) {
    works[k].wait();
    const DTypeShard& s = *shards_[k];
    for (int r = 0; r < world; ++r) {
      if (r == me) continue;
      std::int64_t off = r * s.chunk;
      for (std::size_t j : s.per_rank[static_cast<std::size_t>(r)]) {
        params_[j].copy_(view_at(s.gathered, params_[j], off));
        off += params_[j].numel();
      }
    }
  }
}

std::vector<double> ZeroRedundancyOptimizer::exchange(const std::vector<double>& mine) {
  return all_gather(tensor(mine), group_).to_vector<double>();
}

void ZeroRedundancyOptimizer::zero_grad(bool set_to_none) {
  for (const Tensor& p : params_) {
    if (set_to_none) p.set_grad(Tensor());
    else if (Tensor g = p.grad(); g.defined()) g.zero_();
  }
}

void ZeroRedundancyOptimizer::consolidate_state_dict(int to) {
  const int world = group_.size(), me = group_.rank();
  // The ranks first agree on `to`: naming different ones, each would wait in recv() for the
  // others' state (a hang), and one rank's bad `to` must fail on every rank.
  const std::vector<std::int64_t> tos =
      all_gather(tensor(std::vector<std::int64_t>{to}), group_).to_vector<std::int64_t>();
  for (int r = 1; r < world; ++r)
    KILN_CHECK(tos[static_cast<std::size_t>(r)] == tos[0], kOp,
               "consolidate_state_dict: the ranks name different destinations: rank 0 gives {}, rank {} gives {}",
               tos[0], r, tos[static_cast<std::size_t>(r)]);
  KILN_CHECK(to >= 0 && to < world, kOp, "consolidate_state_dict: rank {} is not in the group of {} ranks", to, world);
  // This rank's part, keyed by global parameter index.
  const StateDict local = local_->state_dict();
  std::string meta;  // "s <i> <field> <value>" and "t <i> <field> <dtype> <ndim> <sizes...>" lines
  std::vector<std::pair<std::string, Tensor>> tensors;
  StateDict out;
  auto global_key = [&](const std::string& key) {
    std::size_t j = 0;
    std::string field;
    if (!parse_state_key(key, j, field)) return std::string();
    return fmt::format("state.{}.{}", owned_.at(j), field);
  };
  for (const auto& [k, v] : local.scalars) {
    const std::string gk = global_key(k);
    if (gk.empty()) continue;  // group options: taken from rank `to`
    if (me == to) out.scalars[gk] = v;
    else meta += fmt::format("s {} {}\n", gk, v);
  }
  for (const auto& [k, t] : local) {
    const std::string gk = global_key(k);
    if (me == to) {
      out.insert(gk, t);
      continue;
    }
    meta += fmt::format("t {} {} {}", gk, static_cast<int>(t.dtype()), t.dim());
    for (std::int64_t d = 0; d < t.dim(); ++d) meta += fmt::format(" {}", t.size(d));
    meta += "\n";
    tensors.emplace_back(gk, t.contiguous());
  }
  if (me != to) {
    send(tensor(std::vector<std::int64_t>{static_cast<std::int64_t>(meta.size())}), to, group_);
    if (!meta.empty()) send(text_to_words(meta), to, group_);
    for (const auto& [k, t] : tensors) send(t, to, group_);
    has_consolidated_ = false;
    return;
  }
  for (int r = 0; r < world; ++r) {
    if (r == to) continue;
    Tensor len = zeros({1}, kInt64);
    recv(len, r, group_);
    const auto n = len.item<std::int64_t>();
    if (n == 0) continue;
    Tensor words = zeros({(n + 7) / 8}, kInt64);
    recv(words, r, group_);
    const std::vector<std::int64_t> w = words.to_vector<std::int64_t>();
    std::string text(static_cast<std::size_t>(n), '\0');
    std::memcpy(text.data(), w.data(), text.size());
    std::size_t pos = 0;
    while (pos < text.size()) {
      const std::size_t eol = text.find('\n', pos);
      const std::string line = text.substr(pos, eol - pos);
      pos = eol + 1;
      char kind = line[0];
      const std::size_t sp1 = line.find(' ', 2);
      const std::string key = line.substr(2, sp1 - 2);
      if (kind == 's') {
        out.scalars[key] = std::stod(line.substr(sp1 + 1));
        continue;
      }
      std::vector<std::int64_t> nums;
      for (std::size_t q = sp1; q < line.size() && q != std::string::npos;) {
        const std::size_t e = line.find(' ', q + 1);
        nums.push_back(std::stoll(line.substr(q + 1, e == std::string::npos ? std::string::npos : e - q - 1)));
        q = e;
      }
      Shape shape(nums.begin() + 2, nums.end());
      Tensor t = empty(shape, TensorOptions(static_cast<DType>(nums[0])));
      recv(t, r, group_);
      out.insert(key, t);
    }
  }
  // Group options as this rank's optimizer has them, with the whole groups' sizes.
  for (const auto& [k, v] : local.scalars) {
    if (k.rfind("group.", 0) != 0) continue;
    out.scalars[k] = v;
  }
  for (std::size_t g = 0; g < group_sizes_.size(); ++g)
    out.scalars[fmt::format("group.{}.num_params", g)] = static_cast<double>(group_sizes_[g]);
  consolidated_ = std::move(out);
  has_consolidated_ = true;
}

StateDict ZeroRedundancyOptimizer::state_dict() const {
  KILN_CHECK(has_consolidated_, kOp,
             "state_dict: call consolidate_state_dict() on every rank first (with this rank as `to`); the state "
             "changes with every step");
  return consolidated_;
}

void ZeroRedundancyOptimizer::load_state_dict(const StateDict& sd) {
  const int me = group_.rank();
  StateDict local;
  auto local_key = [&](const std::string& key, bool& keep) {
    std::size_t i = 0;
    std::string field;
    keep = true;
    if (!parse_state_key(key, i, field)) return key;
    KILN_CHECK(i < params_.size(), kOp, "load_state_dict: '{}' refers to parameter {} but there are {}", key, i,
               params_.size());
    keep = owner_[i] == me;
    return fmt::format("state.{}.{}", local_index_[i], field);
  };
  for (const auto& [k, v] : sd.scalars) {
    std::size_t g = 0;
    if (k.rfind("group.", 0) == 0 && k.ends_with(".num_params") &&
        std::sscanf(k.c_str(), "group.%zu.num_params", &g) == 1 && g < group_sizes_.size()) {
      KILN_CHECK(v == static_cast<double>(group_sizes_[g]), kOp,
                 "load_state_dict: group {} has {} parameters here but {} in the state dict", g, group_sizes_[g], v);
      local.scalars[k] = static_cast<double>(local_->param_groups()[g].params().size());
      continue;
    }
    bool keep = true;
    const std::string lk = local_key(k, keep);
    if (keep) local.scalars[lk] = v;
  }
  for (const auto& [k, t] : sd) {
    bool keep = true;
    const std::string lk = local_key(k, keep);
    if (keep) local.insert(lk, t);
  }
  local_->load_state_dict(local);
  has_consolidated_ = false;
}

}  // namespace kiln::distributed
