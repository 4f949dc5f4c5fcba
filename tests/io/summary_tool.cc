// Writes a TensorBoard event file with known values for tests/io/tensorboard_check.py, which reads
// it back with the tensorboard package's own reader. Usage: kiln_summary_tool <log_dir>
// .cc so the kiln_tests glob does not pick it up.
#include <fmt/format.h>

#include <cmath>
#include <kiln/kiln.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    fmt::print(stderr, "usage: kiln_summary_tool <log_dir>\n");
    return 2;
  }
  try {
    kiln::io::SummaryWriter tb(argv[1]);
    for (int step = 0; step < 5; ++step) {
      tb.add_scalar("loss/train", 2.0 / (step + 1), step, 1000.0 + step);
      tb.add_scalar("lr", 1e-3 * step, step, 1000.0 + step);
    }
    tb.add_scalar("loss/train", -0.25, -7, 2000.0);  // a negative step: ten-byte varint
    // 0, 1, ..., 99 in 4 buckets of width 24.75: 25 values each.
    std::vector<double> values;
    for (int i = 0; i < 100; ++i) values.push_back(i);
    tb.add_histogram("weights", values, 10, 4, 3000.0);
    tb.add_histogram("tensor", kiln::tensor(std::vector<float>{1.5f, 1.5f, 1.5f}, {3}), 11, 30, 3001.0);
    tb.close();
    fmt::print("{}\n", tb.path());
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
}
