// A decoder-only transformer learns to reverse sequences of random digits.
//
// Each example is one token sequence:   3 1 4 1 5 9 | 9 5 1 4 1 3
// The model reads it left to right (causal self-attention) and is trained to predict every
// token after the separator. At test time it sees only "3 1 4 1 5 9 |" and writes the answer
// one token at a time (greedy decoding); an answer counts only if every digit is right.
//
//   build/examples/reverse                       # defaults: 100% exact match in about a minute
//   build/examples/reverse --length 20 --steps 4000 --out runs/reverse
//
// Reversal is all about positions: output slot i must copy input slot L-1-i, which one
// attention head can learn once the positional embeddings line up. The last line printed is
// `exact-match accuracy: <x>` over held-out sequences.
#include <kiln/optim/optim.hpp>
#include "common/common.hpp"
#include "common/data_parallel.hpp"
#include "common/reverser.hpp"

using namespace kiln;

namespace {

constexpr std::int64_t kDigits = 10;  // tokens 0..9 are digits
constexpr std::int64_t kSep = 10;     // token 10 separates question and answer
constexpr std::int64_t kVocab = 11;
constexpr std::int64_t kIgnore = -100;  // targets the loss skips (cross_entropy's ignore_index)

struct Batch {
  Tensor input;   // (B, 2L) int64: digits, separator, reversed digits without the last one
  Tensor target;  // (B, 2L) int64: the next token where it is part of the answer, else kIgnore
  Tensor answer;  // (B, L) int64: the reversed digits
};

// n random sequences of `length` digits. The full sequence is digits | reversed (2L + 1 tokens);
// the model sees it shifted by one, so position t is trained to predict token t + 1.
Batch make_batch(std::int64_t n, std::int64_t length, Generator& gen) {
  Tensor digits = randint(0, kDigits, {n, length}, kInt64, &gen);
  Tensor backwards = arange(length - 1, -1, -1, kInt64);  // L-1, ..., 1, 0
  Tensor reversed = index_select(digits, 1, backwards);
  Tensor sep = full({n, 1}, kSep, kInt64);
  Tensor input = cat({digits, sep, reversed.slice(1, 0, length - 1)}, 1);
  Tensor target = cat({full({n, length}, kIgnore, kInt64), reversed}, 1);
  return {input, target, reversed};
}

// Greedy decoding: start from "digits |" and append the most likely token L times.
// (Recomputes the whole prefix each time; at these lengths that is cheap.)
Tensor generate(examples::Reverser& model, const Tensor& digits, Device dev) {
  NoGradGuard no_grad;
  const std::int64_t n = digits.size(0), length = digits.size(1);
  Tensor seq = cat({digits, full({n, 1}, kSep, TensorOptions(kInt64).device(dev))}, 1);
  for (std::int64_t i = 0; i < length; ++i) {
    Tensor logits = model(seq).select(1, -1);  // (n, vocab) at the last position
    seq = cat({seq, argmax(logits, -1).unsqueeze(1)}, 1);
  }
  return seq.slice(1, length + 1, 2 * length + 1);  // (n, L): the generated answer
}

struct Eval {
  double loss, token_acc, exact;
};

// Teacher-forced loss, plus per-token and exact-match accuracy of free-running generation.
// Chunks of 200 sequences keep memory small (every prefix length makes tensors of a new size).
Eval evaluate(examples::Reverser& model, const Batch& test, Device dev) {
  NoGradGuard no_grad;
  model->eval();
  const std::int64_t n = test.input.size(0), length = test.answer.size(1);
  double loss_sum = 0, right_tokens = 0, right_rows = 0;
  for (std::int64_t i = 0; i < n; i += 200) {
    const std::int64_t m = std::min<std::int64_t>(200, n - i);
    Tensor input = test.input.narrow(0, i, m), target = test.target.narrow(0, i, m);
    Tensor logits = model(input);
    loss_sum += cross_entropy(logits.flatten(0, 1), target.flatten(),
                              CrossEntropyOptions().ignore_index(kIgnore).reduction(Reduction::Sum))
                    .item<double>();
    Tensor right = eq(generate(model, input.slice(1, 0, length), dev), test.answer.narrow(0, i, m));  // (m, L)
    right_tokens += sum(right).item<double>();
    right_rows += sum(all(right, {1})).item<double>();
  }
  model->train();
  return {loss_sum / double(n * length), right_tokens / double(n * length), right_rows / double(n)};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A decoder-only transformer learns to reverse random digit sequences"};
  examples::Flags flags{.steps = 1000, .batch = 128, .lr = 2e-3};
  std::int64_t length = 12, dim = 64, heads = 4, layers = 2, test_size = 1000, warmup = 100;
  examples::add_common_flags(app, flags);
  app.add_option("--length", length, "digits per sequence")->check(examples::whole(1, 256))->capture_default_str();
  app.add_option("--dim", dim, "model width")->check(examples::whole(1))->capture_default_str();
  app.add_option("--heads", heads, "attention heads (must divide --dim)")
      ->check(examples::whole(1))
      ->capture_default_str();
  app.add_option("--layers", layers, "transformer layers")->check(examples::whole(1))->capture_default_str();
  app.add_option("--test-size", test_size, "held-out sequences")->check(examples::whole(1))->capture_default_str();
  app.add_option("--warmup", warmup, "learning-rate warm-up steps (at most a tenth of --steps)")
      ->check(examples::whole(0))
      ->capture_default_str();

  examples::DataParallel dp;  // under mpirun: one rank of a data-parallel run
  return dp.exit(examples::run(app, argc, argv, [&] {
    dp.rank0_writes(flags);
    if (dim % heads != 0) throw examples::UsageError(fmt::format("--heads {} must divide --dim {}", heads, dim));
    Device dev = examples::setup(flags);
    examples::Precision precision(flags, dev);
    examples::Timer wall;

    // Two independent random streams: training batches, and the held-out test set. With
    // 10^length possible sequences, the test sequences are (almost surely) never trained on.
    Generator train_gen(flags.seed), test_gen(flags.seed + 1'000'003);
    Batch test = make_batch(test_size, length, test_gen);
    test = {test.input.to(dev), test.target.to(dev), test.answer.to(dev)};

    examples::Reverser model(kVocab, 2 * length, dim, heads, layers);
    model->to(dev);
    dp.wrap(*model);
    // AdamW with a linear warm-up, then a cosine decay to 10% of the peak rate.
    optim::AdamW opt(model->parameters(), optim::AdamWOptions(flags.lr).betas({0.9, 0.98}).weight_decay(0.01));
    optim::WarmupCosineLR schedule(opt, std::min(warmup, flags.steps / 10), flags.steps, /*start_factor=*/0.0,
                                   /*eta_min=*/0.1 * flags.lr);
    fmt::print("reverse: {}, {}, dim {}, {}, {} parameters, batch {}, {} on {} in {}\n",
               examples::count_of(length, "digit"), examples::count_of(layers, "layer"), dim,
               examples::count_of(heads, "head"), examples::count_str(model->num_parameters()), flags.batch,
               examples::count_of(flags.steps, "step"), dev.str(), precision.name());

    examples::RunLog log(flags, "reverse", {"step", "train_loss", "test_loss", "token_acc", "test_exact", "seconds"});
    examples::Progress progress(flags.steps);
    const std::int64_t eval_every = examples::eval_interval(flags);
    double loss_sum = 0;  // training loss summed since the last evaluation
    std::int64_t loss_count = 0;
    Eval last{};
    for (std::int64_t step = 1; step <= flags.steps; ++step) {
      Batch b = make_batch(flags.batch, length, train_gen);
      auto [input, target, weight] = dp.share(b.input.to(dev), b.target.to(dev));
      Tensor loss;
      {
        auto mixed = precision.autocast();
        Tensor logits = model(input);
        loss =
            cross_entropy(logits.flatten(0, 1), target.flatten(), CrossEntropyOptions().ignore_index(kIgnore)) * weight;
      }
      opt.zero_grad();
      precision.backward_step(loss, opt);
      schedule.step();

      const double step_loss = dp.global_mean(loss);
      examples::check_loss(step_loss, step, flags);
      loss_sum += step_loss, ++loss_count;
      progress.step(step, fmt::format("loss {:.4f}", loss_sum / loss_count));
      if (step % eval_every == 0 || step == flags.steps) {
        const double train_loss = loss_sum / loss_count;
        loss_sum = 0, loss_count = 0;
        {
          auto mixed = precision.autocast();
          last = evaluate(model, test, dev);
        }
        progress.note(log.row({double(step), train_loss, last.loss, last.token_acc, last.exact, wall.seconds()}));
      }
    }
    progress.finish();
    log.close();
    if (!log.metrics.rows().empty()) {
      io::LineChart chart("reverse: digit sequences", "step", "cross-entropy (nats/token)");
      chart.add("training loss", log.metrics.column("step"), log.metrics.column("train_loss"));
      chart.add("test loss", log.metrics.column("step"), log.metrics.column("test_loss"));
      examples::write_chart(flags, chart, "reverse_loss.png", "loss chart, PNG");
    }

    // A few decoded examples, then the headline number (the evaluation after the last step).
    const std::int64_t n_shown = std::min<std::int64_t>(3, test_size);  // --test-size may be 1 or 2
    Tensor shown = test.input.slice(0, 0, n_shown).slice(1, 0, length);
    Tensor answers = [&] {
      auto mixed = precision.autocast();
      return generate(model, shown, dev).to(Device::cpu());
    }();
    for (std::int64_t i = 0; i < n_shown; ++i) {
      std::string q, a;
      for (auto d : shown.to(Device::cpu()).select(0, i).to_vector<std::int64_t>()) q += char('0' + d);
      for (auto d : answers.select(0, i).to_vector<std::int64_t>()) a += char('0' + d);
      fmt::print("  {} -> {}\n", q, a);
    }
    fmt::print("trained in {:.1f} s\n", wall.seconds());
    fmt::print("exact-match accuracy: {:.4f}\n", last.exact);
  }));
}
