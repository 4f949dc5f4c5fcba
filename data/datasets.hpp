#pragma once
/// Ready datasets: IDX image/label files (MNIST, Fashion-MNIST) and windows over a text.
///
///   namespace data = kiln::data;
///   auto train = std::make_shared<data::IdxDataset>(dir + "/train-images-idx3-ubyte.gz",
///                                                   dir + "/train-labels-idx1-ubyte.gz",
///                                                   data::IdxDatasetOptions().num_classes(10));
///   train->get(0);                                   // {image (28, 28) float32 in [0, 1], label ()}
///   std::string text = data::read_text("corpus.txt");
///   data::CharVocab vocab(text);
///   auto windows = std::make_shared<data::TextWindows>(vocab.encode(text), /*context=*/64);
///   windows->get(5);                                 // {tokens[5, 69), tokens[6, 70)}: input, target
///
/// Every problem with a file is a kiln::Error naming the op and the file.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/arg.hpp"
#include "dataset.hpp"

namespace kiln::data {

/// True when kiln was built with zlib, so read_idx reads gzip-compressed files too.
bool has_gzip();

/// An IDX array (the MNIST format: magic 0 0 type rank, rank big-endian u32 sizes, big-endian
/// values), gzip'd or plain. Integer types (u8, i8, i16, i32) load as int64, f32 as float32, f64
/// as float64. Checked: the magic, the type, the rank (>= 1), the data length against the sizes
/// (a truncated or over-long file is an error, as is an overflowing size product).
Tensor read_idx(const std::string& path);

struct IdxDatasetOptions {
  /// > 0: every label must lie in [0, num_classes).
  KILN_ARG(std::int64_t, num_classes) = 0;
};

/// Images (an IDX file of unsigned bytes, shape (N, ...)) and labels (an IDX file of shape (N,)):
/// example i is {image float32 scaled to [0, 1], label int64 0-dim}. A file with no images is an
/// error (a dataset that silently trains on nothing helps nobody).
class IdxDataset : public TensorDataset {
 public:
  IdxDataset(const std::string& images_path, const std::string& labels_path, IdxDatasetOptions options = {});
  const Tensor& images() const { return tensors()[0]; }
  const Tensor& labels() const { return tensors()[1]; }
};

/// The text of a file, or of every regular file (not a symlink) in a folder in name order,
/// joined. A file with a NUL byte is not text: an error when named directly, skipped in a folder
/// (a folder of fortune files with their binary .dat indexes works); an empty result is an error.
std::string read_text(const std::string& path);

/// Characters <-> token ids: the distinct bytes of a text, in byte order.
class CharVocab {
 public:
  explicit CharVocab(std::string_view text);
  std::int64_t size() const { return static_cast<std::int64_t>(chars_.size()); }
  const std::string& chars() const { return chars_; }
  bool contains(unsigned char c) const { return known_[c]; }
  std::int64_t id(unsigned char c) const;  // kiln::Error for a character not in the vocabulary
  /// (len,) int64 token ids.
  Tensor encode(std::string_view text) const;
  std::string decode(const std::vector<std::int64_t>& ids) const;

 private:
  std::string chars_;
  std::array<std::int64_t, 256> id_{};
  std::array<bool, 256> known_{};
};

/// Windows over a 1-D int64 token sequence for next-token prediction: example i is
/// {tokens[i*stride, i*stride + context), the same window shifted by one}. size() is the number
/// of windows whose target fits (0 when the sequence is shorter than context + 1).
class TextWindows : public Dataset {
 public:
  TextWindows(Tensor tokens, std::int64_t context, std::int64_t stride = 1);
  std::int64_t size() const override { return size_; }
  Example get(std::int64_t index) const override;
  std::int64_t context() const { return context_; }

 private:
  Tensor tokens_;
  std::int64_t context_, stride_, size_;
};

}  // namespace kiln::data
