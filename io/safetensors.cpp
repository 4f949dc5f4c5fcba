#include "safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <unordered_map>

#include "../autograd/grad_mode.hpp"
#include "../nn/module.hpp"
#include "checksum.hpp"
#include "safetensors_format.hpp"

namespace kiln::io {

static_assert(std::endian::native == std::endian::little, "the safetensors writer stores native (little-endian) bytes");

namespace {

std::atomic<detail::SafetensorsWriteHook> g_write_hook{nullptr};

std::string errno_str(int err) { return std::strerror(err); }

// Tensors as the writer lays them out: contiguous CPU copies with their offsets in the buffer.
struct Prepared {
  std::vector<detail::TensorEntry> entries;
  std::vector<Tensor> data;
  std::string header;
  std::uint64_t data_bytes = 0;
  std::uint64_t total() const { return 8 + header.size() + data_bytes; }
};

// The metadata key of the checksums kiln writes: one CRC-32C per tensor, 8 hex digits each,
// space-separated, in data order. Readers strip it from the metadata they return.
constexpr const char* kChecksumKey = "kiln.crc32c";

std::map<std::string, std::string> with_checksums(const std::vector<Tensor>& data,
                                                  const std::map<std::string, std::string>& metadata, bool checksum) {
  if (metadata.count(kChecksumKey))
    throw_error("save_safetensors",
                fmt::format("metadata key '{}' is reserved (kiln stores its checksums there)", kChecksumKey));
  std::map<std::string, std::string> meta = metadata;
  if (!checksum) return meta;
  std::string sums;
  for (const Tensor& t : data)
    sums += fmt::format("{}{:08x}", sums.empty() ? "" : " ", detail::crc32c(t.raw_data(), t.nbytes()));
  meta[kChecksumKey] = std::move(sums);
  return meta;
}

Prepared prepare(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                 const SafetensorsSaveOptions& options) {
  Prepared p;
  NoGradGuard ng;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw_error("save_safetensors", fmt::format("tensor '{}' is undefined", name));
    Tensor c = t.detach().to(Device::cpu()).contiguous();
    detail::TensorEntry e;
    e.name = name;
    e.dtype = detail::find_st_dtype(detail::st_dtype_name(c.dtype()))->dtype;
    e.shape = c.shape();
    e.begin = p.data_bytes;
    e.end = p.data_bytes + c.nbytes();
    p.data_bytes = e.end;
    p.entries.push_back(std::move(e));
    p.data.push_back(std::move(c));
  }
  p.header = detail::build_header(p.entries, with_checksums(p.data, metadata, options.checksum()));
  return p;
}

// Feeds the file's bytes, in order, to `sink(ptr, n)`.
template <typename Sink>
void emit(const Prepared& p, Sink&& sink) {
  unsigned char len[8];
  std::uint64_t n = p.header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  sink(len, 8);
  sink(p.header.data(), p.header.size());
  constexpr std::size_t kPiece = 4 << 20;
  for (const Tensor& t : p.data) {
    auto* bytes = static_cast<const unsigned char*>(t.raw_data());
    for (std::size_t done = 0, total = t.nbytes(); done < total;) {
      std::size_t len_piece = std::min(kPiece, total - done);
      sink(bytes + done, len_piece);
      done += len_piece;
    }
  }
}

[[noreturn]] void write_fail(const std::string& path, const std::string& what, int err) {
  throw_error("save_safetensors", fmt::format("cannot write '{}': {}: {}", path, what, errno_str(err)));
}

class FileSource final : public detail::ByteSource {
 public:
  explicit FileSource(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw_error("load_safetensors", fmt::format("cannot open '{}': {}", path, errno_str(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      int err = errno;
      ::close(fd_);
      throw_error("load_safetensors", fmt::format("cannot stat '{}': {}", path, errno_str(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw_error("load_safetensors", fmt::format("'{}' is not a regular file", path));
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~FileSource() override { ::close(fd_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  std::uint64_t size() const override { return size_; }
  void read(std::uint64_t offset, void* dst, std::size_t n) override {
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t r = ::pread(fd_, out, n, static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_error("load_safetensors", fmt::format("{}: read failed: {}", path_, errno_str(errno)));
      if (r == 0)
        throw_error("load_safetensors", fmt::format("{}: the file ended at byte {} while reading (was it truncated "
                                                    "during the load?)",
                                                    path_, offset));
      out += r;
      offset += static_cast<std::uint64_t>(r);
      n -= static_cast<std::size_t>(r);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

std::uint32_t crc_of_range(detail::ByteSource& src, std::uint64_t offset, std::uint64_t n) {
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<std::uint64_t>(n, 1 << 20)));
  std::uint32_t c = 0;
  for (std::uint64_t done = 0; done < n;) {
    const auto piece = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), n - done));
    src.read(offset + done, buf.data(), piece);
    c = detail::crc32c(buf.data(), piece, c);
    done += piece;
  }
  return c;
}

// Checks each tensor against the checksum list kiln wrote, then drops the list from the metadata
// the caller sees. Files from other writers (Python's safetensors) have none and load unchecked.
void verify_checksums(detail::ByteSource& src, const detail::SafetensorsHeader& h, SafetensorsFile& f,
                      std::string_view where) {
  auto it = f.metadata.find(kChecksumKey);
  if (it == f.metadata.end()) return;
  const std::string list = std::move(it->second);
  f.metadata.erase(it);
  auto fail = [&](const std::string& msg) { throw_error("load_safetensors", fmt::format("{}: {}", where, msg)); };
  std::vector<std::uint32_t> sums;
  for (std::size_t at = 0; at < list.size(); at += 9) {
    unsigned v = 0;
    const char* end = list.data() + std::min(at + 8, list.size());
    auto [p, ec] = std::from_chars(list.data() + at, end, v, 16);
    if (ec != std::errc() || p != list.data() + at + 8 || (at + 8 < list.size() && list[at + 8] != ' '))
      fail(fmt::format("its '{}' metadata '{}' is not a list of 8-digit hex checksums", kChecksumKey, list));
    sums.push_back(v);
  }
  if (sums.size() != h.tensors.size())
    fail(fmt::format("its '{}' metadata lists {} checksums for {} tensors: the file was changed after kiln wrote it",
                     kChecksumKey, sums.size(), h.tensors.size()));
  std::vector<std::size_t> order(h.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return h.tensors[a].begin < h.tensors[b].begin; });
  std::unordered_map<std::string_view, const Tensor*> loaded;
  for (const auto& [name, t] : f.tensors) loaded.emplace(name, &t);
  for (std::size_t k = 0; k < order.size(); ++k) {
    const detail::TensorEntry& e = h.tensors[order[k]];
    const Tensor& t = *loaded.at(e.name);
    // A tensor loaded as stored is checked in memory; a converted one (not kiln-written) from the source.
    const std::uint32_t c = static_cast<std::uint64_t>(t.nbytes()) == e.end - e.begin
                                ? detail::crc32c(t.raw_data(), t.nbytes())
                                : crc_of_range(src, h.data_start + e.begin, e.end - e.begin);
    if (c != sums[k])
      fail(
          fmt::format("tensor '{}' ({}, shape {}) fails its checksum (CRC-32C {:08x}, {:08x} stored): the file is "
                      "corrupt",
                      e.name, detail::st_dtype_info(e.dtype).name, shape_str(e.shape), c, sums[k]));
  }
}

SafetensorsFile load_from(detail::ByteSource& src, std::string_view where) {
  detail::SafetensorsHeader h = detail::read_header(src, where);
  SafetensorsFile f;
  f.metadata = std::move(h.metadata);
  f.tensors.reserve(h.tensors.size());
  detail::read_tensor_data(src, h, where, [&](const detail::TensorEntry& e) -> void* {
    Tensor t = Tensor::empty(e.shape, detail::st_dtype_info(e.dtype).kiln_dtype, Device::cpu());
    f.tensors.emplace_back(e.name, t);
    return t.raw_data();
  });
  verify_checksums(src, h, f, where);
  return f;
}

}  // namespace

bool SafetensorsFile::contains(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  std::string names;
  for (std::size_t i = 0; i < tensors.size() && i < 20; ++i) names += (i ? ", '" : "'") + tensors[i].first + "'";
  if (tensors.size() > 20) names += fmt::format(", ... ({} in all)", tensors.size());
  throw_error("SafetensorsFile", fmt::format("no tensor '{}'; the file has {}", name, names.empty() ? "none" : names));
}

std::vector<std::uint8_t> save_safetensors_to_buffer(const NamedTensors& tensors,
                                                     const std::map<std::string, std::string>& metadata,
                                                     const SafetensorsSaveOptions& options) {
  Prepared p = prepare(tensors, metadata, options);
  std::vector<std::uint8_t> out;
  out.reserve(p.total());
  emit(p, [&](const void* d, std::size_t n) {
    auto* b = static_cast<const std::uint8_t*>(d);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

// A writer killed mid-write leaves ".<name>.tmp.<pid>.<n>" behind. Those of this target whose
// writer process is gone are removed before the next write; a live writer's file (another
// process saving the same target), this process's own and other targets' are left alone.
void remove_stale_temps(const std::filesystem::path& dir, const std::string& name) {
  const std::string prefix = "." + name + ".tmp.";
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f.size() <= prefix.size() || f.compare(0, prefix.size(), prefix) != 0) continue;
    const char* p = f.data() + prefix.size();
    const char* e = f.data() + f.size();
    pid_t pid = 0;
    unsigned n = 0;
    auto r1 = std::from_chars(p, e, pid);
    if (r1.ec != std::errc() || r1.ptr == e || *r1.ptr != '.') continue;
    auto r2 = std::from_chars(r1.ptr + 1, e, n);
    if (r2.ec != std::errc() || r2.ptr != e || pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (EPERM: alive, someone else's)
    ::unlink(it->path().c_str());
  }
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata, const SafetensorsSaveOptions& options) {
  Prepared p = prepare(tensors, metadata, options);
  namespace fs = std::filesystem;
  fs::path target(path);
  if (target.filename().empty())
    throw_error("save_safetensors", fmt::format("'{}' names a directory, not a file", path));
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();

  remove_stale_temps(dir, target.filename().string());
  // The temporary file sits next to the target so rename() replaces it atomically (same file system).
  static std::atomic<unsigned> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = (dir / fmt::format(".{}.tmp.{}.{}", target.filename().string(), ::getpid(), counter++)).string();
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt > 1000)) write_fail(path, "creating temporary file '" + tmp + "'", errno);
  }
  auto abandon = [&](const std::string& what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    write_fail(path, what, err);
  };

  const std::uint64_t total = p.total();
  std::uint64_t written = 0;
  emit(p, [&](const void* d, std::size_t n) {
    auto* b = static_cast<const char*>(d);
    while (n > 0) {
      ssize_t r = ::write(fd, b, n);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) abandon("write", errno);
      b += r;
      n -= static_cast<std::size_t>(r);
      written += static_cast<std::uint64_t>(r);
    }
    if (auto hook = g_write_hook.load()) hook(written, total);
  });
  if (::fsync(fd) != 0) abandon("fsync", errno);
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) abandon("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("renaming '" + tmp + "' over it", errno);
  // Make the rename itself durable: without this a power cut can bring back the old directory entry.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    int frc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    if (frc != 0 && err != EINVAL && err != ENOTSUP) write_fail(path, "fsync of its directory", err);
  }
}

SafetensorsFile load_safetensors(const std::string& path) {
  FileSource src(path);
  return load_from(src, path);
}

SafetensorsFile load_safetensors_from_buffer(const void* data, std::size_t size) {
  detail::MemorySource src(data, size);
  return load_from(src, "<memory>");
}

void detail::set_safetensors_write_hook(SafetensorsWriteHook hook) { g_write_hook.store(hook); }

}  // namespace kiln::io

namespace kiln::nn {

using io::load_safetensors;
using io::NamedTensors;
using io::SafetensorsFile;
using io::save_safetensors;

void save(const Module& module, const std::string& path, const std::map<std::string, std::string>& metadata) {
  NamedTensors named;
  for (const auto& [k, t] : module.state_dict()) named.emplace_back(k, t);
  save_safetensors(path, named, metadata);
}

LoadStateDictResult load(Module& module, const std::string& path, bool strict) {
  SafetensorsFile f = load_safetensors(path);
  StateDict dict;
  for (auto& [k, t] : f.tensors) dict.insert(k, t);
  try {
    return module.load_state_dict(dict, strict);
  } catch (const Error& e) {
    throw_error("nn::load", fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace kiln::nn
