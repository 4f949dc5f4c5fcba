#include "safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "../autograd/grad_mode.hpp"
#include "../nn/module.hpp"
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

Prepared prepare(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
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
  p.header = detail::build_header(p.entries, metadata);
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
                                                     const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(tensors, metadata);
  std::vector<std::uint8_t> out;
  out.reserve(p.total());
  emit(p, [&](const void* d, std::size_t n) {
    auto* b = static_cast<const std::uint8_t*>(d);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Prepared p = prepare(tensors, metadata);
  namespace fs = std::filesystem;
  fs::path target(path);
  if (target.filename().empty())
    throw_error("save_safetensors", fmt::format("'{}' names a directory, not a file", path));
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();

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
