// A character-level GPT learns to write like its training text, then samples from it.
//
// By default it reads the fortune cookies of Debian's `fortunes` package; --data takes any text
// file (or a folder of them). The last 10% of the text is held out for validation, and the
// validation loss is compared with a unigram baseline (predicting each character from its
// frequency alone) to show how much the model learned from context.
//
//   build/examples/charlm                                   # ~5 min: val loss ~1.8 vs unigram 3.36, samples
//   build/examples/charlm --out runs/lm                     # + CSV log, PNG loss curve, checkpoint
//   build/examples/charlm --out runs/lm --resume runs/lm/charlm.ckpt --steps 4000   # continue
//   build/examples/charlm --data my.txt --temperature 0.8 --top-k 20 --top-p 0.95 --prompt "Once"
//
// A checkpoint (safetensors) holds the model, optimizer, schedule and random generators, so a
// resumed run continues exactly where the first one stopped.
#include <array>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include <kiln/io/checkpoint.hpp>
#include <kiln/optim/optim.hpp>
#include "common/common.hpp"
#include "common/data_parallel.hpp"

using namespace kiln;
namespace data = kiln::data;

namespace {

const char* kDefaultCorpus = "/usr/share/games/fortunes";

// Characters <-> token ids: the distinct bytes of the text, in byte order.
struct Vocab {
  std::string chars;
  std::array<std::int64_t, 256> id{};
  explicit Vocab(const std::string& text) {
    std::array<bool, 256> seen{};
    for (unsigned char c : text) seen[c] = true;
    for (int c = 0; c < 256; ++c)
      if (seen[c]) id[c] = std::int64_t(chars.size()), chars += char(c);
  }
  std::int64_t size() const { return std::int64_t(chars.size()); }
  std::string hex() const {  // stored in checkpoints to recognize the same text on --resume
    std::string h;
    for (unsigned char c : chars) h += fmt::format("{:02x}", c);
    return h;
  }
  Tensor encode(const std::string& s) const {
    std::vector<std::int64_t> ids;
    for (unsigned char c : s) ids.push_back(id[c]);
    return tensor(ids, {std::int64_t(ids.size())});
  }
};

// Cross-entropy (nats per character) of `val` under the character frequencies of `train`
// (add-one smoothed): what a model that ignores context achieves.
double unigram_loss(const std::string& train, const std::string& val, const Vocab& vocab) {
  std::vector<double> count(vocab.size(), 1.0);
  for (unsigned char c : train) count[vocab.id[c]] += 1;
  double total = double(train.size()) + double(vocab.size()), nll = 0;
  for (unsigned char c : val) nll -= std::log(count[vocab.id[c]] / total);
  return nll / double(val.size());
}

// GPT: token + position embeddings, pre-norm causal transformer layers, a final norm (part of
// the stack) and a linear read-out over the characters.
struct CharGPTImpl : nn::Module {
  CharGPTImpl(std::int64_t vocab, std::int64_t context, std::int64_t dim, std::int64_t heads, std::int64_t layers,
              double dropout) {
    tok = register_module("tok", nn::Embedding(vocab, dim));
    pos = register_module("pos", nn::LearnedPositionalEmbedding(context, dim));
    drop = register_module("drop", nn::Dropout(dropout));
    auto layer =
        nn::TransformerLayerOptions(dim, heads).dropout(dropout).activation(nn::Activation::GELU).norm_first(true);
    body = register_module("body", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, layers)));
    head = register_module("head", nn::Linear(dim, vocab));
  }
  Tensor forward(const Tensor& ids) {  // (B, T) -> logits (B, T, vocab)
    return head(body(drop(pos(tok(ids))), nn::EncoderForward().is_causal(true)));
  }
  nn::Embedding tok{nullptr};
  nn::LearnedPositionalEmbedding pos{nullptr};
  nn::Dropout drop{nullptr};
  nn::TransformerEncoder body{nullptr};
  nn::Linear head{nullptr};
};
KILN_MODULE(CharGPT);

struct SamplingOptions {
  double temperature = 0.8;
  std::int64_t top_k = 0;  // 0 = off
  double top_p = 1.0;      // 1 = off
};

// Draws one token from logits: divide by the temperature, keep the top-k most likely, then the
// smallest set whose probability reaches top-p, renormalize and sample.
std::int64_t sample_token(const std::vector<float>& logits, const SamplingOptions& o, std::mt19937_64& rng) {
  if (o.temperature <= 0) return std::max_element(logits.begin(), logits.end()) - logits.begin();  // greedy
  std::vector<std::int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return logits[a] > logits[b]; });
  if (o.top_k > 0 && o.top_k < std::int64_t(order.size())) order.resize(o.top_k);
  std::vector<double> p;
  for (auto i : order) p.push_back(std::exp((logits[i] - logits[order[0]]) / o.temperature));
  double total = 0;
  for (double x : p) total += x;
  double cum = 0;
  std::size_t keep = 0;
  while (keep < p.size() && (keep == 0 || cum < o.top_p * total)) cum += p[keep++];
  std::discrete_distribution<std::size_t> pick(p.begin(), p.begin() + std::ptrdiff_t(keep));
  return order[pick(rng)];
}

// Autoregressive sampling; the model sees the last `context` characters.
std::string generate(CharGPT& model, const Vocab& vocab, const std::string& prompt, std::int64_t n,
                     std::int64_t context, const SamplingOptions& o, std::mt19937_64& rng, Device dev) {
  NoGradGuard no_grad;
  model->eval();
  std::vector<std::int64_t> ids;
  for (unsigned char c : prompt) ids.push_back(vocab.id[c]);
  std::string out = prompt;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto T = std::min<std::int64_t>(std::int64_t(ids.size()), context);
    std::vector<std::int64_t> window(ids.end() - T, ids.end());
    Tensor logits = model(tensor(window, {1, T}).to(dev)).select(1, -1).select(0, 0);  // (vocab,)
    ids.push_back(sample_token(logits.to(Device::cpu()).to_vector<float>(), o, rng));
    out += vocab.chars[ids.back()];
  }
  model->train();
  return out;
}

// Everything the command line sets.
struct Config {
  examples::Flags flags{.steps = 1500, .batch = 32, .lr = 2e-3};
  std::string data_path = kDefaultCorpus, resume, prompt = "\n";
  std::int64_t stop_at = 0;
  std::int64_t context = 64, dim = 128, heads = 4, layers = 4, sample_chars = 300, samples = 3, warmup = 100;
  double dropout = 0.0, val_fraction = 0.1;  // a short run underfits: no dropout needed
  SamplingOptions sampling;
  // The model's shape, stored in checkpoints so --resume refuses another one.
  std::string shape() const {
    return fmt::format("--context {} --dim {} --heads {} --layers {}", context, dim, heads, layers);
  }
};

void add_flags(CLI::App& app, Config& c) {
  examples::add_common_flags(app, c.flags);
  app.add_option("--data", c.data_path, "a text file, or a folder of them")->capture_default_str();
  app.add_option("--resume", c.resume, "continue from this checkpoint (written to --out/charlm.ckpt)");
  app.add_option("--stop-at", c.stop_at,
                 "stop after this step, with a checkpoint, to --resume later (0 = run to --steps)")
      ->check(examples::whole(0));
  app.add_option("--context", c.context, "characters of context")
      ->check(examples::whole(2, 4096))
      ->capture_default_str();
  app.add_option("--dim", c.dim, "model width")->check(examples::whole(1))->capture_default_str();
  app.add_option("--heads", c.heads, "attention heads (must divide --dim)")
      ->check(examples::whole(1))
      ->capture_default_str();
  app.add_option("--layers", c.layers, "transformer layers")->check(examples::whole(1))->capture_default_str();
  app.add_option("--dropout", c.dropout, "dropout probability")->check(examples::real(0.0, 0.9))->capture_default_str();
  app.add_option("--warmup", c.warmup, "learning-rate warm-up steps (at most a tenth of --steps)")
      ->check(examples::whole(0))
      ->capture_default_str();
  app.add_option("--val-fraction", c.val_fraction, "share of the text held out")
      ->check(examples::real(0.01, 0.5))
      ->capture_default_str();
  app.add_option("--temperature", c.sampling.temperature, "sampling temperature (0 = greedy)")
      ->check(examples::real(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--top-k", c.sampling.top_k, "sample among the k most likely (0 = all)")
      ->check(examples::whole(0))
      ->capture_default_str();
  app.add_option("--top-p", c.sampling.top_p, "nucleus sampling threshold")
      ->check(examples::real(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--prompt", c.prompt, "text the samples start from");
  app.add_option("--sample-chars", c.sample_chars, "characters per sample")
      ->check(examples::whole(0))
      ->capture_default_str();
  app.add_option("--samples", c.samples, "samples printed at the end")
      ->check(examples::whole(0))
      ->capture_default_str();
}

// The text split into training and validation characters, with its vocabulary and the unigram
// baseline.
struct Corpus {
  Vocab vocab;
  std::string train_text, val_text;
  Tensor train_data, val_data;
  double baseline = 0;
};

Corpus load_corpus(const Config& c) {
  std::string text = data::read_text(c.data_path);
  if (c.data_path == kDefaultCorpus) {  // fortune files separate entries with "%" lines; keep plain ASCII
    std::string clean;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      if (line == "%") line.clear();
      for (char ch : line)
        if ((ch >= 32 && ch < 127) || ch == '\t') clean += ch;
      clean += '\n';
    }
    text = std::move(clean);
  }
  const auto n_val = std::int64_t(double(text.size()) * c.val_fraction);
  if (n_val <= c.context + 1 || std::int64_t(text.size()) - n_val <= c.context + 1)
    throw examples::UsageError(
        fmt::format("{}: {} characters is too little text for --context {} and --val-fraction {}", c.data_path,
                    text.size(), c.context, c.val_fraction));
  Corpus corpus{Vocab(text), text.substr(0, text.size() - n_val), text.substr(text.size() - n_val)};
  for (unsigned char ch : c.prompt)
    if (corpus.vocab.chars.find(char(ch)) == std::string::npos)
      throw examples::UsageError(fmt::format("--prompt: character code {} never occurs in the training text", int(ch)));
  corpus.train_data = corpus.vocab.encode(corpus.train_text);
  corpus.val_data = corpus.vocab.encode(corpus.val_text);
  corpus.baseline = unigram_loss(corpus.train_text, corpus.val_text, corpus.vocab);
  fmt::print("charlm: {} ({:.2f} MB, {} distinct characters), {} train / {} validation characters\n", c.data_path,
             text.size() / 1e6, corpus.vocab.size(), corpus.train_text.size(), corpus.val_text.size());
  return corpus;
}

CharGPT& on_device(CharGPT& model, Device dev) {
  model->to(dev);
  return model;
}

// The model with its optimizer and schedule: everything a checkpoint holds (the batches of a
// step follow from the step and --seed).
struct Trainer {
  Trainer(const Config& c, const Corpus& corpus, Device dev)
      : model(corpus.vocab.size(), c.context, c.dim, c.heads, c.layers, c.dropout),
        opt(on_device(model, dev)->parameters(), optim::AdamWOptions(c.flags.lr).betas({0.9, 0.99}).weight_decay(0.1)),
        schedule(opt, std::min(c.warmup, c.flags.steps / 10), c.flags.steps, /*start_factor=*/0.0,
                 /*eta_min=*/0.1 * c.flags.lr),
        precision(c.flags, dev),
        // Everything a resumed run needs to continue exactly: the default generator drives dropout;
        // fp16 adds the loss scaler.
        state{.model = model.get(),
              .optimizer = opt,
              .scheduler = schedule,
              .generators = {{"default", &default_generator()}}} {
    if (precision.uses_scaler()) state.extras["scaler"] = precision.scaler();
  }
  CharGPT model;
  optim::AdamW opt;
  optim::WarmupCosineLR schedule;
  examples::Precision precision;
  io::TrainingState state;
};

// Restores --resume into the trainer; returns the first step still to run.
std::int64_t resume_training(Trainer& tr, const Config& c, const Corpus& corpus) {
  if (c.resume.empty()) return 1;
  auto info = io::read_checkpoint_info(c.resume);
  if (info.metadata["vocab"] != corpus.vocab.hex())
    throw examples::UsageError(
        fmt::format("--resume {}: the checkpoint was trained on other text (its characters differ)", c.resume));
  if (info.metadata["model"] != c.shape())
    throw examples::UsageError(fmt::format("--resume {}: the checkpoint's model has {}; this run asks for {}", c.resume,
                                           info.metadata["model"], c.shape()));
  // The same --steps continues the run exactly; with another --steps the schedule keeps the plan
  // built for it from the saved step and says so (optim::ResumePlan).
  const std::int64_t first_step = io::load_checkpoint(c.resume, tr.state).step + 1;
  fmt::print("resumed from {} at step {}\n", c.resume, first_step - 1);
  return first_step;
}

// Validation loss over fixed windows spread evenly over the validation text (the same ones at
// every evaluation): at most 16 batches.
double validate(CharGPT& model, const Corpus& corpus, const Config& c, const examples::Precision& precision,
                Device dev) {
  NoGradGuard no_grad;
  auto mixed = precision.autocast();
  model->eval();
  const std::int64_t windows = std::max<std::int64_t>(1, corpus.val_data.size(0) - c.context);
  const std::int64_t stride = std::max<std::int64_t>(1, windows / (16 * c.flags.batch));
  data::DataLoader val(std::make_shared<data::TextWindows>(corpus.val_data, c.context, stride),
                       data::DataLoaderOptions().batch_size(c.flags.batch));
  double total = 0;
  std::int64_t batches = 0;
  for (data::Batch& b : val) {
    if (batches == 16) break;
    total += cross_entropy(model(b[0].to(dev)).flatten(0, 1), b[1].to(dev).flatten()).item<double>();
    ++batches;
  }
  model->train();
  return total / batches;
}

// The loss curves with the unigram baseline, next to the CSV log (with --out).
void write_loss_chart(const examples::Flags& flags, const examples::RunLog& log, double baseline) {
  if (log.metrics.rows().empty()) return;
  io::LineChart chart("charlm: character-level GPT", "step", "cross-entropy (nats/char)");
  chart.add("training loss", log.metrics.column("step"), log.metrics.column("train_loss"));
  chart.add("validation loss", log.metrics.column("step"), log.metrics.column("val_loss"));
  chart.hline("unigram baseline", baseline);
  examples::write_chart(flags, chart, "charlm_loss.png", "loss chart, PNG");
}

// Steps [first_step, last_step] with evaluations, log rows and checkpoints every eval interval;
// returns the last validation loss (0 when no step ran).
double train(Trainer& tr, const Config& c, const Corpus& corpus, std::int64_t first_step, std::int64_t last_step,
             const examples::Timer& wall, Device dev, const examples::DataParallel& dp) {
  const examples::Flags& flags = c.flags;
  const std::string ckpt = examples::out_path(flags, "charlm.ckpt");
  examples::RunLog log(flags, "charlm", {"step", "train_loss", "val_loss", "unigram", "lr", "seconds"},
                       /*resume_before=*/double(first_step));
  examples::Progress progress(flags.steps, 0, first_step - 1);
  const std::int64_t eval_every = examples::eval_interval(flags);
  double loss_sum = 0, val_loss = 0;  // training loss summed since the last evaluation
  std::int64_t loss_count = 0;
  // Every training window once per epoch, in a new order each epoch (under mpirun each rank reads
  // its share of every global batch); step s reads global batch s - 1 of that sequence, so a
  // resumed run continues with the batches the uninterrupted one would have read.
  auto windows = std::make_shared<data::TextWindows>(corpus.train_data, c.context);
  data::DataLoader loader(windows, data::DataLoaderOptions()
                                       .batch_size(dp.rank_batch(flags.batch))
                                       .sampler(dp.sampler(windows->size(), flags.seed + 1))
                                       .drop_last(true)
                                       .num_workers(1));
  const std::int64_t per_epoch = loader.size();
  if (per_epoch == 0)
    throw examples::UsageError(
        fmt::format("--batch {}: more than the {} training windows", flags.batch, windows->size()));
  loader.set_epoch(std::uint64_t(first_step - 1) / std::uint64_t(per_epoch), (first_step - 1) % per_epoch);
  auto batch = loader.begin();
  for (std::int64_t step = first_step; step <= last_step; ++step) {
    if (batch == loader.end()) batch = loader.begin();  // the next epoch
    Tensor x = (*batch)[0].to(dev), y = (*batch)[1].to(dev);
    ++batch;
    Tensor loss;
    {
      auto mixed = tr.precision.autocast();
      loss = cross_entropy(tr.model(x).flatten(0, 1), y.flatten());
    }
    tr.opt.zero_grad();
    tr.precision.backward_step(loss, tr.opt, /*clip_norm=*/1.0);
    tr.schedule.step();

    const double step_loss = dp.global_mean(loss);
    examples::check_loss(step_loss, step, flags);
    loss_sum += step_loss, ++loss_count;
    progress.step(step, fmt::format("loss {:.3f}", loss_sum / loss_count));
    if (step % eval_every == 0 || step == last_step) {
      const double train_loss = loss_sum / loss_count;
      loss_sum = 0, loss_count = 0;
      val_loss = validate(tr.model, corpus, c, tr.precision, dev);
      progress.note(
          log.row({double(step), train_loss, val_loss, corpus.baseline, tr.schedule.get_last_lr()[0], wall.seconds()}));
      if (!ckpt.empty())
        io::save_checkpoint(ckpt, tr.state, step,
                            {{"vocab", corpus.vocab.hex()},
                             {"model", c.shape()},
                             {"steps", std::to_string(flags.steps)}});
    }
  }
  progress.finish();
  log.close();
  if (!ckpt.empty() && last_step >= first_step) examples::announce(ckpt, "checkpoint: --resume " + ckpt);
  write_loss_chart(flags, log, corpus.baseline);
  return val_loss;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A character-level GPT trained on a text corpus"};
  Config c;
  add_flags(app, c);
  examples::DataParallel dp;  // under mpirun: one rank of a data-parallel run
  return dp.exit(examples::run(app, argc, argv, [&] {
    dp.rank0_writes(c.flags);
    if (c.prompt.empty() && c.samples > 0)
      throw examples::UsageError("--prompt is empty: a sample needs at least one character to start from");
    if (c.dim % c.heads != 0)
      throw examples::UsageError(fmt::format("--heads {} must divide --dim {}", c.heads, c.dim));
    Device dev = examples::setup(c.flags);
    examples::Timer wall;
    const Corpus corpus = load_corpus(c);
    Trainer tr(c, corpus, dev);
    const std::int64_t first_step = resume_training(tr, c, corpus);
    dp.wrap(*tr.model);
    fmt::print("model: {}, dim {}, {}, context {}, {} parameters, {}; unigram baseline {:.3f} nats/char\n",
               examples::count_of(c.layers, "layer"), c.dim, examples::count_of(c.heads, "head"), c.context,
               examples::count_str(tr.model->num_parameters()), tr.precision.name(), corpus.baseline);
    const std::int64_t last_step = c.stop_at > 0 ? std::min(c.stop_at, c.flags.steps) : c.flags.steps;
    double val_loss = train(tr, c, corpus, first_step, last_step, wall, dev, dp);

    std::mt19937_64 rng(c.flags.seed);
    auto mixed = tr.precision.autocast();
    for (std::int64_t i = 0; i < c.samples; ++i)
      fmt::print("--- sample {} ---\n{}\n", i + 1,
                 generate(tr.model, corpus.vocab, c.prompt, c.sample_chars, c.context, c.sampling, rng, dev));
    if (first_step > last_step) val_loss = validate(tr.model, corpus, c, tr.precision, dev);
    fmt::print("trained in {:.1f} s\n", wall.seconds());
    fmt::print("validation loss: {:.4f} nats/char (unigram baseline {:.4f})\n", val_loss, corpus.baseline);
  }));
}
