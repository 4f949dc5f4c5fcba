// An encoder-decoder transformer learns to translate spelled-out English numbers into digits:
//
//   "three hundred forty two thousand seven"  ->  "342007"
//
// The encoder reads the words (1 to 9 of them, padded to the longest in the batch; the padding
// is masked out by passing each sentence's length). The decoder writes digits one at a time,
// attending causally to what it has written and, through cross-attention, to the encoder's
// output. At test time it decodes greedily through an nn::TransformerCache: each decoder layer
// keeps its past keys and values (and memory's, projected once), so every new digit costs one
// position, not the whole prefix.
//
//   build/examples/seq2seq                      # defaults: >= 98% exact match on held-out numbers
//   build/examples/seq2seq --steps 4000 --out runs/seq2seq
//
// The 1,000 test numbers (3 to 6 digits) are removed from the training distribution, so the
// score measures generalization to numbers the model has never seen.
#include <algorithm>
#include <random>
#include <set>

#include <kiln/optim/optim.hpp>
#include "common/common.hpp"

using namespace kiln;

namespace {

// ---- the task ----
const std::vector<std::string> kWords = {"<pad>",     "zero",     "one",      "two",      "three",   "four",
                                         "five",      "six",      "seven",    "eight",    "nine",    "ten",
                                         "eleven",    "twelve",   "thirteen", "fourteen", "fifteen", "sixteen",
                                         "seventeen", "eighteen", "nineteen", "twenty",   "thirty",  "forty",
                                         "fifty",     "sixty",    "seventy",  "eighty",   "ninety",  "hundred",
                                         "thousand"};
constexpr std::int64_t kSrcPad = 0;
constexpr std::int64_t kBos = 10, kEos = 11, kTgtVocab = 12;  // target tokens: digits 0..9, BOS, EOS
constexpr std::int64_t kIgnore = -100;
constexpr std::int64_t kMaxWords = 9, kMaxDigits = 6;

// Word ids of n < 1000 (appended to out); word id of "one".."nineteen" is 1 + value.
void spell_below_1000(std::int64_t n, std::vector<std::int64_t>& out) {
  if (n >= 100) {  // "<digit> hundred"
    out.push_back(1 + n / 100);
    out.push_back(29);
    n %= 100;
  }
  if (n >= 20) {  // "twenty" .. "ninety"
    out.push_back(21 + (n / 10 - 2));
    n %= 10;
  }
  if (n > 0) out.push_back(1 + n);
}
std::vector<std::int64_t> spell(std::int64_t n) {  // 0 <= n < 1,000,000
  std::vector<std::int64_t> words;
  if (n == 0) return {1};
  if (n >= 1000) {
    spell_below_1000(n / 1000, words);
    words.push_back(30);  // "thousand"
  }
  spell_below_1000(n % 1000, words);
  return words;
}
std::string words_of(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (auto id : ids) s += (s.empty() ? "" : " ") + kWords[id];
  return s;
}

// A number of 1..6 digits; the digit count is uniform, so short numbers are as common as long ones.
std::int64_t draw_number(std::mt19937_64& rng, int min_digits = 1) {
  const int k = std::uniform_int_distribution<int>(min_digits, kMaxDigits)(rng);
  std::int64_t lo = 1;
  for (int i = 1; i < k; ++i) lo *= 10;
  return std::uniform_int_distribution<std::int64_t>(k == 1 ? 0 : lo, 10 * lo - 1)(rng);
}

struct Batch {
  Tensor src;      // (B, S) int64 word ids, padded with kSrcPad
  Tensor src_len;  // (B,) int64: words per sentence (the encoder's key padding)
  Tensor tgt_in;   // (B, T) int64: BOS d1 d2 ... (padded with EOS; the loss skips those positions)
  Tensor tgt_out;  // (B, T) int64: d1 d2 ... EOS, kIgnore where padded
  std::vector<std::int64_t> numbers;
};

Batch make_batch(const std::vector<std::int64_t>& numbers, Device dev) {
  const auto B = static_cast<std::int64_t>(numbers.size());
  std::vector<std::vector<std::int64_t>> srcs;
  std::int64_t S = 1;
  for (auto n : numbers) srcs.push_back(spell(n)), S = std::max<std::int64_t>(S, srcs.back().size());
  const std::int64_t T = kMaxDigits + 1;
  std::vector<std::int64_t> src(B * S, kSrcPad), len(B), tin(B * T, kEos), tout(B * T, kIgnore);
  for (std::int64_t b = 0; b < B; ++b) {
    std::copy(srcs[b].begin(), srcs[b].end(), src.begin() + b * S);
    len[b] = std::int64_t(srcs[b].size());
    std::string digits = std::to_string(numbers[b]);
    tin[b * T] = kBos;
    for (std::size_t i = 0; i < digits.size(); ++i) tin[b * T + i + 1] = tout[b * T + i] = digits[i] - '0';
    tout[b * T + digits.size()] = kEos;
  }
  auto to_dev = [&](std::vector<std::int64_t>& v, Shape s) { return tensor(v, s).to(dev); };
  return {to_dev(src, {B, S}), to_dev(len, {B}), to_dev(tin, {B, T}), to_dev(tout, {B, T}), numbers};
}

// ---- the model ----
struct TranslatorImpl : nn::Module {
  TranslatorImpl(std::int64_t dim, std::int64_t heads, std::int64_t layers) {
    src_emb = register_module("src_emb", nn::Embedding(std::int64_t(kWords.size()), dim));
    tgt_emb = register_module("tgt_emb", nn::Embedding(kTgtVocab, dim));
    src_pos = register_module("src_pos", nn::LearnedPositionalEmbedding(kMaxWords, dim));
    tgt_pos = register_module("tgt_pos", nn::LearnedPositionalEmbedding(kMaxDigits + 1, dim));
    // Pre-norm layers; each stack ends with its own final norm.
    auto layer = nn::TransformerLayerOptions(dim, heads).dropout(0.0).activation(nn::Activation::GELU).norm_first(true);
    encoder = register_module("encoder", nn::TransformerEncoder(nn::TransformerEncoderOptions(layer, layers)));
    decoder = register_module("decoder", nn::TransformerDecoder(nn::TransformerDecoderOptions(layer, layers)));
    head = register_module("head", nn::Linear(dim, kTgtVocab));
  }
  // src (B, S) -> memory (B, S, dim); padded positions are never attended to.
  Tensor encode(const Tensor& src, const Tensor& src_len) {
    return encoder(src_pos(src_emb(src)), nn::EncoderForward().key_padding(src_len));
  }
  // tgt (B, T) tokens at positions offset.. -> logits (B, T, vocab), attending causally to the
  // target and to the unpadded memory. With a cache, only the new tokens are passed: each layer
  // appends their keys/values to its self-attention cache and reuses memory's keys/values.
  Tensor decode(const Tensor& tgt, const Tensor& memory, const Tensor& src_len, nn::TransformerCache* cache = nullptr,
                std::int64_t offset = 0) {
    Tensor h = tgt_pos(tgt_emb(tgt), offset);
    return head(decoder(h, memory, nn::DecoderForward().memory_key_padding(src_len).cache(cache)));
  }
  nn::Embedding src_emb{nullptr}, tgt_emb{nullptr};
  nn::LearnedPositionalEmbedding src_pos{nullptr}, tgt_pos{nullptr};
  nn::TransformerEncoder encoder{nullptr};
  nn::TransformerDecoder decoder{nullptr};
  nn::Linear head{nullptr};
};
KILN_MODULE(Translator);

// Greedy decoding: feed BOS, then each predicted digit. With the KV cache each step passes only
// the newest token; without it (--no-kv-cache) the whole prefix is recomputed every step.
std::vector<std::string> translate(Translator& model, const Batch& batch, const examples::Precision& precision,
                                   bool use_cache = true) {
  NoGradGuard no_grad;
  auto mixed = precision.autocast();
  model->eval();
  const std::int64_t B = batch.src.size(0), T = kMaxDigits + 1;
  Tensor memory = model->encode(batch.src, batch.src_len);
  nn::TransformerCache cache = model->decoder->make_cache({B}, T, memory.size(1));
  Tensor seq = full({B, 1}, kBos, TensorOptions(kInt64).device(memory.device()));  // (B, t + 1)
  for (std::int64_t t = 0; t < T; ++t) {
    Tensor logits = use_cache ? model->decode(seq.slice(1, t, t + 1), memory, batch.src_len, &cache, /*offset=*/t)
                              : model->decode(seq, memory, batch.src_len);
    seq = cat({seq, argmax(logits.select(1, -1), -1).unsqueeze(1)}, 1);
  }
  model->train();
  auto ids = seq.to(Device::cpu()).to_vector<std::int64_t>();
  std::vector<std::string> result(B);
  for (std::int64_t b = 0; b < B; ++b)  // the digits up to the first non-digit (EOS)
    for (std::int64_t t = 1; t <= T && ids[b * (T + 1) + t] < 10; ++t) result[b] += char('0' + ids[b * (T + 1) + t]);
  return result;
}

double exact_match(Translator& model, const Batch& test, const examples::Precision& precision, bool use_cache = true) {
  auto got = translate(model, test, precision, use_cache);
  std::int64_t right = 0;
  for (std::size_t i = 0; i < got.size(); ++i) right += got[i] == std::to_string(test.numbers[i]);
  return double(right) / double(got.size());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"An encoder-decoder transformer translates spelled-out numbers into digits"};
  examples::Flags flags{.steps = 2000, .batch = 128, .lr = 1e-3};
  std::int64_t dim = 64, heads = 4, layers = 2, test_size = 1000, warmup = 100;
  bool no_cache = false;
  examples::add_common_flags(app, flags);
  app.add_option("--dim", dim, "model width")->check(examples::whole(1))->capture_default_str();
  app.add_option("--heads", heads, "attention heads (must divide --dim)")
      ->check(examples::whole(1))
      ->capture_default_str();
  app.add_option("--layers", layers, "encoder layers = decoder layers")
      ->check(examples::whole(1))
      ->capture_default_str();
  app.add_option("--test-size", test_size, "held-out numbers")
      ->check(examples::whole(1, 100000))
      ->capture_default_str();
  app.add_flag("--no-kv-cache", no_cache, "decode by recomputing the whole prefix (same results, slower)");
  app.add_option("--warmup", warmup, "learning-rate warm-up steps (at most a tenth of --steps)")
      ->check(examples::whole(0))
      ->capture_default_str();

  return examples::run(app, argc, argv, [&] {
    if (dim % heads != 0) throw examples::UsageError(fmt::format("--heads {} must divide --dim {}", heads, dim));
    Device dev = examples::setup(flags);
    examples::Precision precision(flags, dev);
    examples::Timer wall;

    // Held-out numbers first; training draws skip them.
    std::mt19937_64 rng(flags.seed);
    std::set<std::int64_t> held_out;
    while (std::int64_t(held_out.size()) < test_size) held_out.insert(draw_number(rng, /*min_digits=*/3));
    std::vector<std::int64_t> test_numbers(held_out.begin(), held_out.end());
    std::shuffle(test_numbers.begin(), test_numbers.end(), rng);
    Batch test = make_batch(test_numbers, dev);
    auto train_batch = [&] {
      std::vector<std::int64_t> numbers;
      while (std::int64_t(numbers.size()) < flags.batch)
        if (auto n = draw_number(rng); !held_out.count(n)) numbers.push_back(n);
      return make_batch(numbers, dev);
    };

    Translator model(dim, heads, layers);
    model->to(dev);
    optim::AdamW opt(model->parameters(), optim::AdamWOptions(flags.lr).betas({0.9, 0.98}).weight_decay(0.01));
    optim::WarmupCosineLR schedule(opt, std::min(warmup, flags.steps / 10), flags.steps, /*start_factor=*/0.0,
                                   /*eta_min=*/0.1 * flags.lr);
    fmt::print("seq2seq: {} + {}, dim {}, {}, {} parameters, batch {}, {} on {}\n", layers,
               examples::count_of(layers, "layer"), dim, examples::count_of(heads, "head"),
               examples::count_str(model->num_parameters()), flags.batch, examples::count_of(flags.steps, "step"),
               dev.str());
    fmt::print("  e.g. \"{}\" -> {}\n", words_of(spell(test_numbers[0])), test_numbers[0]);

    examples::RunLog log(flags, "seq2seq", {"step", "train_loss", "test_exact", "seconds"});
    examples::Progress progress(flags.steps);
    const std::int64_t eval_every = examples::eval_interval(flags);
    double loss_sum = 0;  // training loss summed since the last evaluation
    std::int64_t loss_count = 0;
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      Batch b = train_batch();
      Tensor loss;
      {
        auto mixed = precision.autocast();
        Tensor memory = model->encode(b.src, b.src_len);
        Tensor logits = model->decode(b.tgt_in, memory, b.src_len);  // teacher forcing
        loss = cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), CrossEntropyOptions().ignore_index(kIgnore));
      }
      opt.zero_grad();
      precision.backward_step(loss, opt, /*clip_norm=*/1.0);
      schedule.step();

      const double step_loss = loss.item<double>();
      examples::check_loss(step_loss, step, flags);
      loss_sum += step_loss, ++loss_count;
      progress.step(step, fmt::format("loss {:.4f}", loss_sum / loss_count));
      if (step % eval_every == 0 || step == flags.steps) {
        const double train_loss = loss_sum / loss_count;
        loss_sum = 0, loss_count = 0;
        double exact = exact_match(model, test, precision, !no_cache);
        progress.note(log.row({double(step), train_loss, exact, wall.seconds()}));
      }
    }
    progress.finish();
    log.close();
    if (!log.metrics.rows().empty()) {
      const auto steps = log.metrics.column("step");
      io::LineChart loss("seq2seq: number words to digits", "step", "cross-entropy (nats/token)");
      loss.add("training loss", steps, log.metrics.column("train_loss"));
      examples::write_chart(flags, loss, "seq2seq_loss.png", "loss chart, PNG");
      io::LineChart exact("seq2seq: number words to digits", "step", "exact-match accuracy");
      exact.add("held-out numbers", steps, log.metrics.column("test_exact"));
      examples::write_chart(flags, exact, "seq2seq_accuracy.png", "accuracy chart, PNG");
    }

    // Some translations of numbers never seen in training, and a few special ones.
    std::vector<std::int64_t> shown(test_numbers.begin(),
                                    test_numbers.begin() + std::min<std::ptrdiff_t>(3, test_size));
    shown.insert(shown.end(), {0, 7, 19, 100, 1000, 999999});
    Batch show = make_batch(shown, dev);
    auto got = translate(model, show, precision, !no_cache);
    for (std::size_t i = 0; i < got.size(); ++i)
      fmt::print("  {:<64} -> {:>6} {}\n", words_of(spell(show.numbers[i])), got[i],
                 got[i] == std::to_string(show.numbers[i]) ? "" : "(wrong)");
    fmt::print("trained in {:.1f} s\n", wall.seconds());
    fmt::print("exact-match accuracy: {:.4f}\n", exact_match(model, test, precision, !no_cache));
  });
}
