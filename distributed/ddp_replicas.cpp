// The replica check: per-entry hashes compared across the ranks, then the first differing
// entry's description gathered from every rank so each raises the same message.
#include "ddp_replicas.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "../core/error.hpp"
#include "collectives.hpp"

namespace kiln::distributed::detail {
namespace {

constexpr std::int64_t kDescWords = 32;  // 256 bytes of description per rank

std::string describe(const ReplicaEntry& e) {
  return fmt::format("{} '{}' {} {}", e.kind, e.name, dtype_name(e.tensor.dtype()), shape_str(e.tensor.shape()));
}

std::int64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return static_cast<std::int64_t>(h);
}

// Every rank's value of one int64 (all_gather of one element).
std::vector<std::int64_t> gather_one(std::int64_t v, const Group& g) {
  return all_gather(tensor(std::vector<std::int64_t>{v}), g).to_vector<std::int64_t>();
}

}  // namespace

void check_replicas(const char* op, const std::vector<ReplicaEntry>& entries, const Group& group) {
  const int world = group.size();
  const auto counts = gather_one(static_cast<std::int64_t>(entries.size()), group);
  const std::int64_t common = *std::min_element(counts.begin(), counts.end());
  std::vector<std::int64_t> hashes(static_cast<std::size_t>(common));
  for (std::int64_t i = 0; i < common; ++i) hashes[i] = fnv1a(describe(entries[i]));
  std::int64_t differ = common;  // the first entry where some rank differs (common: a count)
  if (common > 0) {
    const auto all = all_gather(tensor(hashes), group).to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < common && differ == common; ++i)
      for (int r = 1; r < world; ++r)
        if (all[r * common + i] != all[i]) {
          differ = i;
          break;
        }
  }
  const bool same_count = std::all_of(counts.begin(), counts.end(), [&](std::int64_t c) { return c == counts[0]; });
  if (differ == common && same_count) return;
  // Every rank's description of entry `differ` (or of its absence), gathered as text.
  std::string mine = differ < static_cast<std::int64_t>(entries.size())
                         ? describe(entries[differ])
                         : fmt::format("no entry (it has {} in all)", entries.size());
  mine.resize(std::min<std::size_t>(mine.size(), kDescWords * 8 - 1));
  std::vector<std::int64_t> words(kDescWords, 0);
  std::memcpy(words.data(), mine.data(), mine.size());
  const auto all = all_gather(tensor(words), group).to_vector<std::int64_t>();
  auto text = [&](int r) { return std::string(reinterpret_cast<const char*>(all.data() + r * kDescWords)); };
  std::string msg = fmt::format("the ranks' models differ at entry {}: rank 0 has {}", differ, text(0));
  int listed = 0;
  for (int r = 1; r < world; ++r) {
    if (text(r) == text(0)) continue;
    if (listed++ == 3) {
      msg += "; ...";
      break;
    }
    msg += fmt::format("; rank {} has {}", r, text(r));
  }
  throw_error(op, msg);
}

}  // namespace kiln::distributed::detail
