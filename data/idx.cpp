// IDX files (data/datasets.hpp): read_idx and IdxDataset.
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "../autograd/ops.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "datasets.hpp"

#ifdef KILN_WITH_ZLIB
#include <zlib.h>
#endif

namespace kiln::data {

namespace {

bool has_gzip_magic(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  unsigned char m[2] = {0, 0};
  f.read(reinterpret_cast<char*>(m), 2);
  return f.gcount() == 2 && m[0] == 0x1f && m[1] == 0x8b;
}

// The file's bytes, decompressed when it is gzip'd.
std::string read_bytes(const char* op, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(static_cast<bool>(f), op, "{}: cannot open the file", path);
  if (!has_gzip_magic(path)) {
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
  }
#ifdef KILN_WITH_ZLIB
  gzFile gz = gzopen(path.c_str(), "rb");
  KILN_CHECK(gz != nullptr, op, "{}: cannot open the file", path);
  std::string bytes;
  std::vector<char> buf(1 << 16);
  int n;
  while ((n = gzread(gz, buf.data(), static_cast<unsigned>(buf.size()))) > 0) bytes.append(buf.data(), std::size_t(n));
  int err = Z_OK;
  const char* msg = gzerror(gz, &err);
  const std::string zmsg = msg ? msg : "";
  gzclose(gz);
  KILN_CHECK(n >= 0 && (err == Z_OK || err == Z_STREAM_END), op, "{}: cannot decompress: {}", path, zmsg);
  return bytes;
#else
  throw_error(op, fmt::format("{}: gzip-compressed, but kiln was built without zlib (install zlib1g-dev and "
                              "rebuild, or decompress the file)",
                              path));
#endif
}

std::uint64_t be(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = v << 8 | p[i];
  return v;
}

// Big-endian values of `type` -> a tensor of `dtype`.
template <typename Out>
Tensor decode(const unsigned char* p, std::size_t count, int type, const Shape& shape) {
  std::vector<Out> v(count);
  for (std::size_t i = 0; i < count; ++i) {
    switch (type) {
      case 0x08: v[i] = static_cast<Out>(p[i]); break;
      case 0x09: v[i] = static_cast<Out>(static_cast<std::int8_t>(p[i])); break;
      case 0x0B: v[i] = static_cast<Out>(static_cast<std::int16_t>(be(p + 2 * i, 2))); break;
      case 0x0C: v[i] = static_cast<Out>(static_cast<std::int32_t>(be(p + 4 * i, 4))); break;
      case 0x0D: {
        const auto bits = static_cast<std::uint32_t>(be(p + 4 * i, 4));
        float f;
        std::memcpy(&f, &bits, 4);
        v[i] = static_cast<Out>(f);
        break;
      }
      default: {
        const std::uint64_t bits = be(p + 8 * i, 8);
        double d;
        std::memcpy(&d, &bits, 8);
        v[i] = static_cast<Out>(d);
      }
    }
  }
  return tensor(v, shape);
}

}  // namespace

bool has_gzip() {
#ifdef KILN_WITH_ZLIB
  return true;
#else
  return false;
#endif
}

namespace {

// read_idx, also telling the element type. byte_scale > 0: unsigned bytes load as float32 times
// byte_scale (IdxDataset's images: no int64 copy eight times the file's size).
Tensor read_idx_typed(const std::string& path, int& type_out, float byte_scale = 0) {
  const std::string bytes = read_bytes("read_idx", path);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  KILN_CHECK(bytes.size() >= 4 && p[0] == 0 && p[1] == 0, "read_idx", "{}: not an IDX file (bad magic number)", path);
  const int type = p[2], rank = p[3];
  int itemsize = 0;
  switch (type) {
    case 0x08:
    case 0x09: itemsize = 1; break;
    case 0x0B: itemsize = 2; break;
    case 0x0C:
    case 0x0D: itemsize = 4; break;
    case 0x0E: itemsize = 8; break;
    default:
      throw_error("read_idx", fmt::format("{}: unknown IDX element type 0x{:02x} (expected 0x08, 0x09, 0x0b, 0x0c, "
                                          "0x0d or 0x0e)",
                                          path, type));
  }
  KILN_CHECK(rank >= 1, "read_idx", "{}: IDX rank 0 (an IDX array needs at least one dimension)", path);
  const std::size_t header = 4 + 4 * std::size_t(rank);
  KILN_CHECK(bytes.size() >= header, "read_idx", "{}: truncated IDX header: rank {} needs {} bytes, the file has {}",
             path, rank, header, bytes.size());
  Shape shape;
  std::size_t count = 1;
  const std::size_t data_bytes = bytes.size() - header;
  for (int i = 0; i < rank; ++i) {
    const auto d = static_cast<std::int64_t>(be(p + 4 + 4 * i, 4));
    shape.push_back(d);
    // Compare before multiplying: the sizes cannot promise more than the file holds.
    if (d != 0 && count > data_bytes / std::size_t(d)) count = data_bytes + 1;
    else count *= std::size_t(d);
  }
  KILN_CHECK(count <= data_bytes / std::size_t(itemsize) && count * std::size_t(itemsize) == data_bytes, "read_idx",
             "{}: the IDX header promises shape {} of {}-byte values, the file has {} data bytes{}", path,
             shape_str(shape), itemsize, data_bytes,
             count * std::size_t(itemsize) > data_bytes ? " (truncated)" : " (trailing bytes)");
  const unsigned char* data = p + header;
  type_out = type;
  if (type == 0x08 && byte_scale > 0) {
    std::vector<float> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<float>(data[i]) * byte_scale;
    return tensor(v, shape);
  }
  if (type == 0x0D) return decode<float>(data, count, type, shape);
  if (type == 0x0E) return decode<double>(data, count, type, shape);
  return decode<std::int64_t>(data, count, type, shape);
}

}  // namespace

Tensor read_idx(const std::string& path) {
  int type = 0;
  return read_idx_typed(path, type);
}

namespace {

std::vector<Tensor> load_images_labels(const std::string& images_path, const std::string& labels_path,
                                       const IdxDatasetOptions& o) {
  int image_type = 0, label_type = 0;
  Tensor images = read_idx_typed(images_path, image_type, 1.0f / 255.0f);
  Tensor labels = read_idx_typed(labels_path, label_type);
  KILN_CHECK(image_type == 0x08, "IdxDataset", "{}: images must be unsigned bytes (IDX type 0x08), got type 0x{:02x}",
             images_path, image_type);
  KILN_CHECK(images.dim() >= 2, "IdxDataset", "{}: images need shape (N, ...), got {}", images_path,
             shape_str(images.shape()));
  KILN_CHECK(images.size(0) > 0, "IdxDataset", "{}: the file holds no images (shape {})", images_path,
             shape_str(images.shape()));
  KILN_CHECK(labels.dim() == 1 && labels.dtype() == kInt64, "IdxDataset",
             "{}: labels need an integer IDX array of shape (N,), got {} {}", labels_path, dtype_name(labels.dtype()),
             shape_str(labels.shape()));
  KILN_CHECK(labels.size(0) == images.size(0), "IdxDataset", "{} has {} images but {} has {} labels", images_path,
             images.size(0), labels_path, labels.size(0));
  if (o.num_classes() > 0) {
    const std::vector<std::int64_t> l = labels.to_vector<std::int64_t>();
    for (std::size_t i = 0; i < l.size(); ++i)
      KILN_CHECK(l[i] >= 0 && l[i] < o.num_classes(), "IdxDataset", "{}: label {} (example {}) is out of range [0, {})",
                 labels_path, l[i], i, o.num_classes());
  }
  return {images, labels};
}

}  // namespace

IdxDataset::IdxDataset(const std::string& images_path, const std::string& labels_path, IdxDatasetOptions options)
    : TensorDataset(load_images_labels(images_path, labels_path, options)) {}

}  // namespace kiln::data
