// A small vision transformer (ViT) learns to classify Fashion-MNIST clothing images.
//
// Each 28x28 image is cut into 7x7 patches (a 4x4 grid); each patch is flattened and projected
// to a token, a learned [class] token is put in front, learned position embeddings are added,
// and a stack of transformer layers (bidirectional self-attention) mixes the 17 tokens. The
// [class] token's output is read out by a linear layer over the 10 classes.
//
//   build/examples/vit                              # ~88% test accuracy in ~2 min
//   build/examples/vit --patch 4 --dim 96 --steps 4000 --out runs/vit
//
// The data comes from Debian's dataset-fashion-mnist package (the original IDX files, gzip'd);
// --data points at another folder holding the same four files (gzip'd or not).
#include <algorithm>
#include <array>
#include <numeric>
#include <random>

#include <kiln/optim/optim.hpp>
#include "common/common.hpp"
#include "common/data.hpp"

using namespace kiln;

namespace {

const char* kDefaultData = "/usr/share/datasets/fashion-mnist";
const std::array<const char*, 10> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct Split {
  Tensor images;  // (N, 28, 28) float32, normalized
  Tensor labels;  // (N,) int64
};

// Loads "<prefix>-images-idx3-ubyte[.gz]" and "<prefix>-labels-idx1-ubyte[.gz]" from `dir`.
Split load_split(const std::string& dir, const std::string& prefix) {
  auto find = [&](const std::string& name) {
    for (const std::string& candidate : {name + ".gz", name})
      if (std::filesystem::exists(std::filesystem::path(dir) / candidate))
        return (std::filesystem::path(dir) / candidate).string();
    throw examples::UsageError(
        fmt::format("{}: no {}[.gz] (is the dataset-fashion-mnist package installed?)", dir, name));
  };
  examples::Idx images = examples::read_idx(find(prefix + "-images-idx3-ubyte"));
  examples::Idx labels = examples::read_idx(find(prefix + "-labels-idx1-ubyte"));
  if (images.shape.size() != 3 || images.shape[1] != 28 || images.shape[2] != 28)
    throw examples::UsageError(
        fmt::format("{} images: expected shape (N, 28, 28), got rank {}", prefix, images.shape.size()));
  if (labels.shape.size() != 1 || labels.shape[0] != images.shape[0])
    throw examples::UsageError(fmt::format("{}: {} images but {} labels", prefix, images.shape[0], labels.shape[0]));
  for (auto l : labels.data)
    if (l > 9) throw examples::UsageError(fmt::format("{} labels: class {} is out of range 0..9", prefix, int(l)));
  std::vector<float> pixels(images.data.begin(), images.data.end());
  std::vector<std::int64_t> classes(labels.data.begin(), labels.data.end());
  return {tensor(pixels, {images.shape[0], 28, 28}) / 255.0f, tensor(classes, {labels.shape[0]})};
}

struct ViTImpl : nn::Module {
  ViTImpl(std::int64_t patch, std::int64_t dim, std::int64_t heads, std::int64_t layers, double dropout)
      : patch(patch), grid(28 / patch) {
    embed = register_module("embed", nn::Linear(patch * patch, dim));
    cls = register_parameter("cls", zeros({1, 1, dim}));
    pos = register_module("pos", nn::LearnedPositionalEmbedding(grid * grid + 1, dim));
    auto layer =
        nn::TransformerLayerOptions(dim, heads).dropout(dropout).activation(nn::Activation::GELU).norm_first(true);
    body = register_module("body", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, layers)));
    head = register_module("head", nn::Linear(dim, 10));
  }
  // images (B, 28, 28) -> logits (B, 10)
  Tensor forward(const Tensor& images) {
    const std::int64_t B = images.size(0), P = patch, G = grid;
    // (B, G*P, G*P) -> (B, G, P, G, P) -> (B, G, G, P, P) -> (B, G*G, P*P): one row per patch
    Tensor patches = images.view({B, G, P, G, P}).permute({0, 1, 3, 2, 4}).reshape({B, G * G, P * P});
    Tensor tokens = cat({cls.expand({B, 1, cls.size(2)}), embed(patches)}, 1);  // (B, 1 + G*G, dim)
    Tensor h = body(pos(tokens));
    return head(h.select(1, 0));  // the [class] token
  }
  std::int64_t patch, grid;
  nn::Linear embed{nullptr}, head{nullptr};
  Tensor cls;
  nn::LearnedPositionalEmbedding pos{nullptr};
  nn::TransformerEncoder body{nullptr};
};
KILN_MODULE(ViT);

// Predicted classes for a whole split, in chunks (eval mode: no dropout).
std::vector<std::int64_t> predict(ViT& model, const Split& data, Device dev) {
  NoGradGuard no_grad;
  model->eval();
  std::vector<Tensor> preds;
  for (std::int64_t i = 0, n = data.images.size(0); i < n; i += 1000)
    preds.push_back(argmax(model(data.images.narrow(0, i, std::min<std::int64_t>(1000, n - i)).to(dev)), -1));
  model->train();
  return cat(preds).to(Device::cpu()).to_vector<std::int64_t>();
}

double accuracy(const std::vector<std::int64_t>& pred, const Split& data) {
  auto labels = data.labels.to_vector<std::int64_t>();
  std::int64_t right = 0;
  for (std::size_t i = 0; i < pred.size(); ++i) right += pred[i] == labels[i];
  return double(right) / double(pred.size());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A vision transformer classifies Fashion-MNIST images"};
  examples::Flags flags{.steps = 2000, .batch = 128, .lr = 2e-3};
  std::string data_dir = kDefaultData;
  std::int64_t patch = 7, dim = 64, heads = 4, layers = 3, warmup = 100;
  double dropout = 0.0;
  examples::add_common_flags(app, flags);
  app.add_option("--data", data_dir, "folder with the four Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--patch", patch, "patch size (must divide 28)")
      ->check(CLI::IsMember({1, 2, 4, 7, 14, 28}))
      ->capture_default_str();
  app.add_option("--dim", dim, "model width")->check(examples::whole(1))->capture_default_str();
  app.add_option("--heads", heads, "attention heads (must divide --dim)")
      ->check(examples::whole(1))
      ->capture_default_str();
  app.add_option("--layers", layers, "transformer layers")->check(examples::whole(1))->capture_default_str();
  app.add_option("--dropout", dropout, "dropout probability")->check(examples::real(0.0, 0.9))->capture_default_str();
  app.add_option("--warmup", warmup, "learning-rate warm-up steps (at most a tenth of --steps)")
      ->check(examples::whole(0))
      ->capture_default_str();

  return examples::run(app, argc, argv, [&] {
    if (dim % heads != 0) throw examples::UsageError(fmt::format("--heads {} must divide --dim {}", heads, dim));
    Device dev = examples::setup(flags);
    examples::Precision precision(flags, dev);
    examples::Timer wall;

    Split train = load_split(data_dir, "train"), test = load_split(data_dir, "t10k");
    // Checked before any work: an empty split or an oversized batch would fail only at the end.
    if (train.images.size(0) == 0)
      throw examples::UsageError(fmt::format("{}: the training files hold no images", data_dir));
    if (test.images.size(0) == 0)
      throw examples::UsageError(
          fmt::format("{}: the t10k test files hold no images (nothing to measure accuracy on)", data_dir));
    if (flags.batch > train.images.size(0))
      throw examples::UsageError(
          fmt::format("--batch {} is larger than the {} training images", flags.batch, train.images.size(0)));
    // Normalize with the training set's pixel statistics.
    const float mu = mean(train.images).item<float>(), sigma = kiln::std(train.images).item<float>();
    train.images = (train.images - mu) / sigma, test.images = (test.images - mu) / sigma;
    const std::int64_t n_train = train.images.size(0);
    fmt::print("vit: {} training / {} test images from {}\n", n_train, test.images.size(0), data_dir);

    ViT model(patch, dim, heads, layers, dropout);
    model->to(dev);
    optim::AdamW opt(model->parameters(), optim::AdamWOptions(flags.lr).weight_decay(0.05));
    optim::WarmupCosineLR schedule(opt, std::min(warmup, flags.steps / 10), flags.steps, /*start_factor=*/0.0,
                                   /*eta_min=*/0.0);
    fmt::print("model: {}x{} patches, {}, dim {}, {}, {} parameters; batch {}, {} (~{:.1f} epochs) on {}\n", patch,
               patch, examples::count_of(layers, "layer"), dim, examples::count_of(heads, "head"),
               examples::count_str(model->num_parameters()), flags.batch, examples::count_of(flags.steps, "step"),
               double(flags.steps * flags.batch) / double(n_train), dev.str());

    // Each epoch visits the training images in a fresh random order.
    std::mt19937_64 shuffle_rng(flags.seed + 1);
    std::vector<std::int64_t> order(n_train);
    std::iota(order.begin(), order.end(), 0);
    std::int64_t cursor = n_train;
    auto next_batch = [&] {
      if (cursor + flags.batch > n_train) std::shuffle(order.begin(), order.end(), shuffle_rng), cursor = 0;
      Tensor idx = tensor(std::vector<std::int64_t>(order.begin() + cursor, order.begin() + cursor + flags.batch),
                          {flags.batch});
      cursor += flags.batch;
      return std::pair{index_select(train.images, 0, idx).to(dev), index_select(train.labels, 0, idx).to(dev)};
    };

    examples::RunLog log(flags, "vit", {"step", "train_loss", "train_acc", "test_acc", "seconds"});
    examples::Progress progress(flags.steps);
    const std::int64_t eval_every = examples::eval_interval(flags);
    double loss_sum = 0, right = 0, seen = 0, test_acc = 0;
    std::int64_t loss_count = 0;
    std::vector<std::int64_t> test_pred;
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      auto [x, y] = next_batch();
      Tensor logits, loss;
      {
        auto mixed = precision.autocast();
        logits = model(x);
        loss = cross_entropy(logits, y);
      }
      opt.zero_grad();
      precision.backward_step(loss, opt);
      schedule.step();

      const double step_loss = loss.item<double>();
      examples::check_loss(step_loss, step, flags);
      loss_sum += step_loss, ++loss_count;
      right += sum(eq(argmax(logits, -1), y)).item<double>(), seen += double(flags.batch);
      progress.step(step, fmt::format("loss {:.3f}  train acc {:.3f}", loss_sum / loss_count, right / seen));
      if (step % eval_every == 0 || step == flags.steps) {
        auto mixed = precision.autocast();
        test_pred = predict(model, test, dev);
        test_acc = accuracy(test_pred, test);
        progress.note(log.row({double(step), loss_sum / loss_count, right / seen, test_acc, wall.seconds()}));
        loss_sum = right = seen = 0, loss_count = 0;
      }
    }
    progress.finish();
    log.close();

    // Per-class test accuracy shows which clothes are hard to tell apart.
    auto labels = test.labels.to_vector<std::int64_t>();
    std::array<int, 10> hit{}, count{};
    for (std::size_t i = 0; i < labels.size(); ++i) count[labels[i]]++, hit[labels[i]] += test_pred[i] == labels[i];
    for (int c = 0; c < 10; ++c) fmt::print("  {:<12} {:.3f}\n", kClasses[c], double(hit[c]) / std::max(1, count[c]));
    if (!log.metrics.rows().empty()) {
      const auto steps = log.metrics.column("step");
      io::LineChart loss("vit: Fashion-MNIST", "step", "cross-entropy (nats)");
      loss.add("training loss", steps, log.metrics.column("train_loss"));
      examples::write_chart(flags, loss, "vit_loss.png", "loss chart, PNG");
      io::LineChart acc("vit: Fashion-MNIST", "step", "accuracy");
      acc.add("training accuracy", steps, log.metrics.column("train_acc"));
      acc.add("test accuracy", steps, log.metrics.column("test_acc"));
      examples::write_chart(flags, acc, "vit_accuracy.png", "accuracy chart, PNG");
    }
    fmt::print("trained in {:.1f} s\n", wall.seconds());
    fmt::print("test accuracy: {:.4f}\n", test_acc);  // after the last step
  });
}
