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
#include <filesystem>

#include <kiln/data/data.hpp>
#include <kiln/optim/optim.hpp>
#include "common/common.hpp"

using namespace kiln;
namespace data = kiln::data;

namespace {

const char* kDefaultData = "/usr/share/datasets/fashion-mnist";
const std::array<const char*, 10> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// Finds "<name>.gz" or "<name>" in `dir`.
std::string find_file(const std::string& dir, const std::string& name) {
  for (const std::string& candidate : {name + ".gz", name})
    if (std::filesystem::exists(std::filesystem::path(dir) / candidate))
      return (std::filesystem::path(dir) / candidate).string();
  throw examples::UsageError(
      fmt::format("{}: no {}[.gz] (is the dataset-fashion-mnist package installed?)", dir, name));
}

// "<prefix>-images-idx3-ubyte[.gz]" and "<prefix>-labels-idx1-ubyte[.gz]" from `dir`: images
// (N, 28, 28) in [0, 1], labels 0..9 (kiln::data checks the files).
data::IdxDataset load_split(const std::string& dir, const std::string& prefix) {
  const std::string images = find_file(dir, prefix + "-images-idx3-ubyte");  // reported first when missing
  const std::string labels = find_file(dir, prefix + "-labels-idx1-ubyte");
  data::IdxDataset split(images, labels, data::IdxDatasetOptions().num_classes(10));
  if (split.images().dim() != 3 || split.images().size(1) != 28 || split.images().size(2) != 28)
    throw examples::UsageError(
        fmt::format("{} images: expected shape (N, 28, 28), got {}", prefix, shape_str(split.images().shape())));
  return split;
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
std::vector<std::int64_t> predict(ViT& model, data::DataLoader& split, Device dev) {
  NoGradGuard no_grad;
  model->eval();
  std::vector<Tensor> preds;
  for (data::Batch& b : split) preds.push_back(argmax(model(b[0].to(dev)), -1));
  model->train();
  return cat(preds).to(Device::cpu()).to_vector<std::int64_t>();
}

double accuracy(const std::vector<std::int64_t>& pred, const std::vector<std::int64_t>& labels) {
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

    std::shared_ptr<data::TensorDataset> train_set, test_set;
    {
      data::IdxDataset train = load_split(data_dir, "train"), test = load_split(data_dir, "t10k");
      // Normalized with the training set's pixel statistics (the raw images are freed here).
      const float mu = mean(train.images()).item<float>(), sigma = kiln::std(train.images()).item<float>();
      auto normalized = [&](const data::IdxDataset& split) {
        return std::make_shared<data::TensorDataset>(
            std::vector<Tensor>{(split.images() - mu) / sigma, split.labels()});
      };
      train_set = normalized(train), test_set = normalized(test);
    }
    const std::int64_t n_train = train_set->size();
    const std::vector<std::int64_t> test_labels = test_set->tensors()[1].to_vector<std::int64_t>();
    // Each epoch visits the training images in a fresh random order (a batch made ahead on a
    // worker thread); the test set in order.
    Generator shuffle_gen(flags.seed + 1);
    data::DataLoader train_loader(train_set, data::DataLoaderOptions()
                                                 .batch_size(flags.batch)
                                                 .shuffle(true)
                                                 .generator(&shuffle_gen)
                                                 .drop_last(true)
                                                 .num_workers(1));
    data::DataLoader test_loader(test_set, data::DataLoaderOptions().batch_size(1000));
    if (train_loader.size() == 0)
      throw examples::UsageError(fmt::format("--batch {} is larger than the {} training images", flags.batch, n_train));
    fmt::print("vit: {} training / {} test images from {}\n", n_train, test_set->size(), data_dir);

    ViT model(patch, dim, heads, layers, dropout);
    model->to(dev);
    optim::AdamW opt(model->parameters(), optim::AdamWOptions(flags.lr).weight_decay(0.05));
    optim::WarmupCosineLR schedule(opt, std::min(warmup, flags.steps / 10), flags.steps, /*start_factor=*/0.0,
                                   /*eta_min=*/0.0);
    fmt::print("model: {}x{} patches, {}, dim {}, {}, {} parameters; batch {}, {} (~{:.1f} epochs) on {}\n", patch,
               patch, examples::count_of(layers, "layer"), dim, examples::count_of(heads, "head"),
               examples::count_str(model->num_parameters()), flags.batch, examples::count_of(flags.steps, "step"),
               double(flags.steps * flags.batch) / double(n_train), dev.str());

    examples::RunLog log(flags, "vit", {"step", "train_loss", "train_acc", "test_acc", "seconds"});
    examples::Progress progress(flags.steps);
    const std::int64_t eval_every = examples::eval_interval(flags);
    double loss_sum = 0, right = 0, seen = 0, test_acc = 0;
    std::int64_t loss_count = 0;
    std::vector<std::int64_t> test_pred;
    auto batch = train_loader.begin();
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      if (batch == train_loader.end()) batch = train_loader.begin();  // the next epoch
      Tensor x = (*batch)[0].to(dev), y = (*batch)[1].to(dev);
      ++batch;
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
        test_pred = predict(model, test_loader, dev);
        test_acc = accuracy(test_pred, test_labels);
        progress.note(log.row({double(step), loss_sum / loss_count, right / seen, test_acc, wall.seconds()}));
        loss_sum = right = seen = 0, loss_count = 0;
      }
    }
    progress.finish();
    log.close();

    // Per-class test accuracy shows which clothes are hard to tell apart.
    std::array<int, 10> hit{}, count{};
    for (std::size_t i = 0; i < test_labels.size(); ++i)
      count[test_labels[i]]++, hit[test_labels[i]] += test_pred[i] == test_labels[i];
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
