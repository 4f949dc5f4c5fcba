#pragma once
/// TensorBoard event files: `tensorboard --logdir runs` shows kiln runs next to PyTorch ones.
///
///   kiln::io::SummaryWriter tb("runs/charlm");          // runs/charlm/events.out.tfevents.<time>.<host>.<pid>.<n>
///   tb.add_scalar("loss/train", 2.31, step);
///   tb.add_histogram("weights/head", model->head->weight, step);
///   tb.flush();                                       // also done by close() and the destructor
///
/// The file is TensorFlow's record format (length, masked CRC-32C of the length, an Event
/// protobuf, its masked CRC-32C), read by TensorBoard's own reader. Writes are buffered; flush()
/// and close() throw kiln::Error when the disk refuses them (the destructor cannot, so call
/// close() to learn of a failure).
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace kiln {
class Tensor;
}

namespace kiln::io {

class SummaryWriter {
 public:
  /// Creates `log_dir` (and parents) and a new event file in it; the first record is the file
  /// version ("brain.Event:2"), as TensorBoard expects.
  explicit SummaryWriter(const std::string& log_dir);
  ~SummaryWriter();
  SummaryWriter(const SummaryWriter&) = delete;
  SummaryWriter& operator=(const SummaryWriter&) = delete;

  /// One point of the curve `tag` (stored as float32, as TensorBoard does). `wall_time` in
  /// seconds since the epoch; by default now.
  void add_scalar(const std::string& tag, double value, std::int64_t step, double wall_time = -1);
  /// The distribution of `values` in `bins` equal-width buckets between their min and max
  /// (non-finite values are an error: they have no bucket).
  void add_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step, int bins = 30,
                     double wall_time = -1);
  /// The same for every element of a tensor (any device and floating or integer dtype).
  void add_histogram(const std::string& tag, const Tensor& values, std::int64_t step, int bins = 30,
                     double wall_time = -1);
  /// Pushes buffered records to the file.
  void flush();
  /// Flushes and closes; later add_* calls are an error.
  void close();
  /// The event file's path.
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  std::ofstream file_;
};

}  // namespace kiln::io
