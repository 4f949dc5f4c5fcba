// GPT training-step benchmark: the model of ../shared/anchors/README.md ("The model"), mirrored
// exactly from the anchors' gpt_bench.cpp (libtorch) so the two can be compared side by side:
//   tokens (B, T) -> wte[vocab, d] + wpe[T, d] -> Dropout(p)
//   N x pre-LN block:  x = x + Attn(LN1(x));  x = x + Dropout(Linear(4d -> d)(GELU_erf(Linear(d -> 4d)(LN2(x)))))
//     Attn (--attn manual): qkv = Linear(d -> 3d), split into H heads, causal softmax(q k^T / sqrt(d/H)),
//          Dropout(p) on the probabilities, . v, merge heads, Linear(d -> d), Dropout(p)
//          (kiln runs the softmax(q k^T) v part as its fused attention op: same math, same masks)
//     Attn (--attn mha): nn::MultiHeadAttention(d, H, dropout p), causal, then Dropout(p)
//   LN_f -> lm_head Linear(d -> vocab, no bias, not tied) -> cross_entropy
// Init: Linear/Embedding weights N(0, 0.02), biases 0, LayerNorm (1, 0). AdamW(lr 3e-4, betas
// (0.9, 0.999), eps 1e-8, weight_decay 0.01) on every parameter; gradients set to none each step.
// Data: the anchors' splitmix64 "language" (seed 1337, 200,000 tokens) and batch offsets
// (seed 1338), bit for bit. One step = zero_grad + forward + loss + backward + AdamW (batch
// sampling untimed). Presets: small (T 64, d 128, 4 heads, 4 layers, batch 32, 5 + 50 steps) and
// shakespeare (T 256, d 384, 6 heads, 6 layers, batch 16, 3 + 10 steps: a bf16 step's allocator cache settles in 3).
//
//   build/bench/gpt                          # small
//   build/bench/gpt --preset shakespeare
//   build/bench/gpt --attn mha --dropout 0 --verbose
//   mpirun -np 2 build/bench/gpt --threads 1        # data-parallel (DDP), as the anchors' gpt_ddp.py
//   mpirun -np 3 build/bench/gpt --threads 1 --preset shakespeare   # 6 + 5 + 5 sequences
//   build/bench/gpt --precision bf16         # forward + loss under kiln::autocast (PyTorch's autocast rows)
// --precision fp16 adds an amp::GradScaler (scale, step, update inside the timed step).
// Prints `RESULT gpt impl=kiln preset=.. ... median_step_ms=.. tokens_per_s=.. peak_rss_mib=..
// loss_first=.. loss_last=..` (loss_* are single-step losses of the first and last step). Under
// mpirun (N ranks) every rank draws the same global batch and trains on its contiguous share
// (any N up to --batch: the first batch % N ranks take one sequence more, and each rank's loss is
// weighted by its share, so the step equals one process's on the whole batch) through
// distributed::DistributedDataParallel; rank 0 prints `RESULT gpt_ddp ...` with global tokens/s,
// cpu_ms (rank 0's process CPU time per step: compute plus the communication thread), the
// all-reduce time per step, the part of it not hidden behind backward, and each bucket's hidden
// fraction (launch order). `--no-ddp` runs the same ranks without DDP: the compute floor.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <kiln/kiln.hpp>
#include <kiln/optim/optim.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.hpp"

using namespace kiln;

namespace {

using kiln::bench::now_s;
using kiln::bench::peak_rss_mib;

struct Config {
  std::string preset = "small", attn = "manual", device = "cpu", precision = "fp32";
  std::int64_t vocab = 65, T = 64, d = 128, heads = 4, layers = 4, batch = 32;
  double dropout = 0.1, lr = 3e-4;
  int steps = 50, warmup = 5, threads = 2;
  std::uint64_t seed = 1337;
  bool verbose = false;
};

// ---- the anchors' deterministic data ----
struct SplitMix64 {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};

// A Markov-ish stream: mostly tok' = (7 tok + 3) % vocab, a random token one time in ten.
std::vector<std::int64_t> make_data(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  SplitMix64 rng{seed};
  std::vector<std::int64_t> d(n);
  d[0] = 0;
  for (std::int64_t i = 0; i + 1 < n; ++i) {
    std::uint64_t r = rng.next();
    d[i + 1] = (r % 10 != 0) ? (7 * d[i] + 3) % vocab : static_cast<std::int64_t>((r >> 8) % vocab);
  }
  return d;
}

// x = data[o : o + T], y = data[o + 1 : o + T + 1] for one random offset o per row.
std::pair<Tensor, Tensor> get_batch(const std::vector<std::int64_t>& data, const Config& c, SplitMix64& rng) {
  std::vector<std::int64_t> x(c.batch * c.T), y(c.batch * c.T);
  const std::uint64_t span = data.size() - c.T - 1;
  for (std::int64_t b = 0; b < c.batch; ++b) {
    auto o = static_cast<std::int64_t>(rng.next() % span);
    for (std::int64_t t = 0; t < c.T; ++t) {
      x[b * c.T + t] = data[o + t];
      y[b * c.T + t] = data[o + t + 1];
    }
  }
  return {tensor(x, {c.batch, c.T}), tensor(y, {c.batch, c.T})};
}

// ---- the model ----
struct CausalSelfAttentionImpl : nn::Module {
  explicit CausalSelfAttentionImpl(const Config& c) : d(c.d), H(c.heads), p(c.dropout), kind(c.attn) {
    if (kind == "mha") {
      mha = register_module("mha", nn::MultiHeadAttention(nn::MultiHeadAttentionOptions(d, H).dropout(p)));
    } else {
      c_attn = register_module("c_attn", nn::Linear(d, 3 * d));
      c_proj = register_module("c_proj", nn::Linear(d, d));
    }
    resid_drop = register_module("resid_drop", nn::Dropout(p));
  }
  Tensor forward(const Tensor& x) {  // x (B, T, d)
    const std::int64_t B = x.size(0), T = x.size(1), hd = d / H;
    Tensor y;
    if (kind == "mha") {
      y = mha(x, nn::MhaForward().is_causal(true));
    } else {
      // As the anchors: split (one node, whose backward concatenates the three gradients).
      std::vector<Tensor> qkv = split(c_attn(x), d, 2);
      Tensor q = qkv[0].view({B, T, H, hd}).transpose(1, 2);  // (B, H, T, hd)
      Tensor k = qkv[1].view({B, T, H, hd}).transpose(1, 2);
      Tensor v = qkv[2].view({B, T, H, hd}).transpose(1, 2);
      auto att = nn::functional::scaled_dot_product_attention(q, k, v,
                                                              SdpaOptions().is_causal(true).dropout_p(p).training(
                                                                  is_training()));
      y = c_proj(att.output.transpose(1, 2).reshape({B, T, d}));  // merge heads (a view)
    }
    return resid_drop(y);
  }
  std::int64_t d, H;
  double p;
  std::string kind;
  nn::Linear c_attn{nullptr}, c_proj{nullptr};
  nn::MultiHeadAttention mha{nullptr};
  nn::Dropout resid_drop{nullptr};
};
KILN_MODULE(CausalSelfAttention);

struct BlockImpl : nn::Module {
  explicit BlockImpl(const Config& c) {
    ln1 = register_module("ln1", nn::LayerNorm(c.d));
    attn = register_module("attn", CausalSelfAttention(c));
    ln2 = register_module("ln2", nn::LayerNorm(c.d));
    fc = register_module("fc", nn::Linear(c.d, 4 * c.d));
    proj = register_module("proj", nn::Linear(4 * c.d, c.d));
    drop = register_module("drop", nn::Dropout(c.dropout));
  }
  Tensor forward(Tensor x) {
    x = x + attn(ln1(x));
    return x + drop(proj(gelu(fc(ln2(x)))));
  }
  nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  CausalSelfAttention attn{nullptr};
  nn::Linear fc{nullptr}, proj{nullptr};
  nn::Dropout drop{nullptr};
};
KILN_MODULE(Block);

struct GPTImpl : nn::Module {
  explicit GPTImpl(const Config& c) {
    wte = register_module("wte", nn::Embedding(c.vocab, c.d));
    wpe = register_module("wpe", nn::Embedding(c.T, c.d));
    drop = register_module("drop", nn::Dropout(c.dropout));
    blocks = register_module("blocks", nn::ModuleList());
    for (std::int64_t i = 0; i < c.layers; ++i) blocks->push_back(Block(c));
    ln_f = register_module("ln_f", nn::LayerNorm(c.d));
    lm_head = register_module("lm_head", nn::Linear(nn::LinearOptions(c.d, c.vocab).bias(false)));
    // nanoGPT-style init, as the anchors: LayerNorms keep (1, 0), biases 0, the rest N(0, 0.02).
    NoGradGuard no_grad;
    for (auto& [name, p] : named_parameters()) {
      if (name.find("ln") != std::string::npos) continue;
      if (name.ends_with("bias")) nn::init::zeros_(p);
      else nn::init::normal_(p, 0.0, 0.02);
    }
  }
  Tensor forward(const Tensor& idx) {  // idx (B, T) int64 -> logits (B, T, vocab)
    Tensor pos = arange(0, idx.size(1), 1, TensorOptions(kInt64).device(idx.device()));
    Tensor x = drop(wte(idx) + wpe(pos));
    for (auto& block : *blocks) x = static_cast<BlockImpl&>(*block).forward(x);
    return lm_head(ln_f(x));
  }
  nn::Embedding wte{nullptr}, wpe{nullptr};
  nn::Dropout drop{nullptr};
  nn::ModuleList blocks{nullptr};
  nn::LayerNorm ln_f{nullptr};
  nn::Linear lm_head{nullptr};
};
KILN_MODULE(GPT);

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}
double cpu_time_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}
// Minor page faults so far: memory the process touches for the first time (fresh OS pages).
long minor_faults() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

}  // namespace

int main(int argc, char** argv) {
  namespace dist = kiln::distributed;
  // Under mpirun: one rank of a data-parallel run. First, so that a bad command line, which every
  // rank parses alike, is reported once (rank 0) and the ranks end together with code 2.
  dist::InitGuard dist_guard;
  const int world = dist::world_size(), rank = dist::rank();
  auto usage_error = [&](const std::string& line) {
    if (rank == 0) fmt::print(stderr, "error: {}\n", line);
    return 2;
  };
  Config c;
  CLI::App app{"GPT training-step benchmark (the anchors' model, data and optimizer)"};
  std::string preset = "small";
  app.add_option("--preset", preset, "small or shakespeare (sets the sizes below first)")
      ->check(CLI::IsMember({"small", "shakespeare"}))
      ->capture_default_str();
  // Explicit sizes override the preset.
  std::optional<std::int64_t> T, d, heads, layers, batch, vocab;
  std::optional<int> steps, warmup;
  app.add_option("--T", T, "sequence length");
  app.add_option("--d", d, "model width");
  app.add_option("--heads", heads, "attention heads");
  app.add_option("--layers", layers, "blocks");
  app.add_option("--batch", batch, "sequences per step");
  app.add_option("--vocab", vocab, "vocabulary size");
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed warm-up steps");
  app.add_option("--dropout", c.dropout, "dropout probability")->check(CLI::Range(0.0, 0.99))->capture_default_str();
  app.add_option("--lr", c.lr, "AdamW learning rate")->capture_default_str();
  app.add_option("--seed", c.seed, "data seed (batches use seed + 1)")->capture_default_str();
  app.add_option("--threads", c.threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--attn", c.attn, "manual (qkv Linear + fused attention) or mha (nn::MultiHeadAttention)")
      ->check(CLI::IsMember({"manual", "mha"}))
      ->capture_default_str();
  app.add_option("--device", c.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--precision", c.precision, "fp32, or mixed precision under kiln::autocast: bf16 or fp16")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  app.add_flag("--verbose", c.verbose, "per-step times and losses");
  double bucket_mb = 25, first_bucket_mb = 1;
  app.add_option("--bucket-mb", bucket_mb, "under mpirun: DDP bucket size (MiB)")->capture_default_str();
  app.add_option("--first-bucket-mb", first_bucket_mb, "under mpirun: DDP first bucket size (MiB)")
      ->capture_default_str();
  bool no_ddp = false;
  app.add_flag("--no-ddp", no_ddp, "under mpirun: each rank trains its share alone (the compute floor beside DDP)");
  std::string out;
  app.add_option("--out", out, "also append the RESULT line to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) return app.exit(e);
    std::ostringstream quiet;
    return app.exit(e, quiet, quiet);
  }
  c.preset = preset;
  if (preset == "shakespeare")  // nanoGPT shakespeare-char size
    c.T = 256, c.d = 384, c.heads = 6, c.layers = 6, c.batch = 16, c.steps = 10, c.warmup = 3;
  for (auto [opt, dst] : {std::pair{&T, &c.T},
                          {&d, &c.d},
                          {&heads, &c.heads},
                          {&layers, &c.layers},
                          {&batch, &c.batch},
                          {&vocab, &c.vocab}})
    if (*opt) *dst = **opt;
  if (steps) c.steps = *steps;
  if (warmup) c.warmup = *warmup;
  if (c.T <= 0 || c.d <= 0 || c.heads <= 0 || c.layers <= 0 || c.batch <= 0 || c.vocab <= 1 || c.steps <= 0 ||
      c.warmup < 0 || c.d % c.heads != 0) {
    return usage_error(
        fmt::format("need positive sizes, vocab > 1, steps > 0 and heads dividing d (d={} heads={})", c.d, c.heads));
  }
  Device dev = Device::cpu();
  if (c.device == "cuda") {
    if (!cuda_is_available()) {  // may differ between hosts: every rank without a GPU says so
      fmt::print(stderr, "error: --device cuda: this kiln has no CUDA backend or sees no GPU\n");
      return 2;
    }
    dev = Device::cuda(0);
  }

  if (c.batch < world)
    return usage_error(fmt::format("--batch {} gives some of the {} ranks no sequence", c.batch, world));
  // Rank r's contiguous share of the global batch; the first batch % world ranks take one more
  // sequence. DDP averages the ranks' gradients, so each rank weights its mean loss by
  // world * rows / batch: the average is then the gradient of the global batch's mean loss.
  const std::int64_t rows = c.batch / world + (rank < c.batch % world ? 1 : 0);
  const std::int64_t first_row = rank * (c.batch / world) + std::min<std::int64_t>(rank, c.batch % world);
  const double loss_weight = static_cast<double>(world * rows) / static_cast<double>(c.batch);
  if (rank != 0) c.verbose = false;

  set_num_threads(c.threads);
  manual_seed(c.seed);
  GPT model(c);
  model->to(dev);
  model->train();
  std::unique_ptr<dist::DistributedDataParallel> ddp;
  if (world > 1 && !no_ddp)
    ddp = std::make_unique<dist::DistributedDataParallel>(
        *model, dist::DDPOptions().bucket_cap_mb(bucket_mb).first_bucket_cap_mb(first_bucket_mb));
  optim::AdamW opt(model->parameters(), optim::AdamWOptions(c.lr).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));
  const DType low = c.precision == "fp16" ? kFloat16 : kBFloat16;
  amp::GradScaler scaler(low, amp::GradScalerOptions().enabled(c.precision == "fp16"));
  auto data = make_data(200000, c.vocab, c.seed);
  SplitMix64 batch_rng{c.seed + 1};
  if (rank == 0)
    fmt::print(
        "# gpt kiln world={} threads={} attn={} device={} precision={} vocab={} T={} d={} heads={} layers={} batch={} "
        "dropout={:.2f} lr={} params={}\n",
        world, c.threads, c.attn, dev.str(), c.precision, c.vocab, c.T, c.d, c.heads, c.layers, c.batch, c.dropout,
        c.lr, model->num_parameters());

  std::vector<double> t_step, t_cpu, t_fwd, t_bwd, t_opt, t_comm, t_exposed;
  std::vector<std::vector<double>> bucket_hidden;
  double first_loss = 0, last_loss = 0, cpu0 = 0, wall0 = 0;
  long faults0 = 0;
  std::uint64_t os_allocs0 = 0;
  for (int s = 0; s < c.warmup + c.steps; ++s) {
    if (s == c.warmup)
      cpu0 = cpu_time_s(), wall0 = now_s(), faults0 = minor_faults(), os_allocs0 = cpu_allocator_stats().os_allocs;
    auto [x, y] = get_batch(data, c, batch_rng);  // untimed
    if (world > 1) {                              // this rank's contiguous share of the global batch
      x = x.narrow(0, first_row, rows).contiguous(), y = y.narrow(0, first_row, rows).contiguous();
      dist::barrier();
    }
    x = x.to(dev), y = y.to(dev);
    const double c0 = cpu_time_s(), t0 = now_s();
    opt.zero_grad();  // set_to_none
    Tensor loss;
    {
      auto mixed = autocast(dev, low, c.precision != "fp32");
      Tensor logits = model(x);
      loss = cross_entropy(logits.view({-1, c.vocab}), y.view({-1}));
      if (loss_weight != 1.0) loss = loss * loss_weight;
    }
    double t1 = now_s();
    scaler.scale(loss).backward();
    double t2 = now_s();
    scaler.step(opt);
    scaler.update();
    double l = loss.item<double>();  // on a GPU this waits for the step to finish
    const double t3 = now_s(), c3 = cpu_time_s();
    if (world > 1) {  // the global batch's loss; the communication statistics (untimed)
      Tensor lt = loss.detach().clone();
      dist::all_reduce(lt, dist::ReduceOp::Avg);
      l = lt.item<double>();
      if (ddp && s >= c.warmup) {
        const dist::DDPStats& st = ddp->last_stats();
        t_comm.push_back(st.comm_s()), t_exposed.push_back(st.exposed_s());
        bucket_hidden.resize(st.buckets.size());
        for (std::size_t b = 0; b < st.buckets.size(); ++b) bucket_hidden[b].push_back(st.hidden_fraction(b));
      }
    }
    if (s == 0) first_loss = l;
    last_loss = l;
    if (c.verbose)
      fmt::print("step {} loss {:.4f} step_ms {:.2f} fwd_ms {:.2f} bwd_ms {:.2f} opt_ms {:.2f}\n", s, l,
                 (t3 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3);
    if (s >= c.warmup) {
      t_step.push_back(t3 - t0), t_fwd.push_back(t1 - t0), t_bwd.push_back(t2 - t1), t_opt.push_back(t3 - t2);
      t_cpu.push_back(c3 - c0);
    }
  }
  const double cpu_util = (cpu_time_s() - cpu0) / (now_s() - wall0);
  // Per timed step: page faults (all threads, the batch sampling included) and OS allocations
  // by the CPU allocator; both are 0-ish once its cache holds what a step needs.
  const double faults_per_step = double(minor_faults() - faults0) / double(c.steps);
  const double os_allocs_per_step = double(cpu_allocator_stats().os_allocs - os_allocs0) / double(c.steps);
  const double med = median(t_step);
  if (rank != 0) return 0;
  std::string result;
  if (world > 1) {
    std::string hidden;
    for (const auto& b : bucket_hidden) hidden += fmt::format("{}{:.2f}", hidden.empty() ? "" : "/", median(b));
    result = fmt::format(
        "RESULT gpt_ddp impl={} world={} threads_per_rank={} preset={} attn={} precision={} T={} d={} "
        "layers={} "
        "batch={} dropout={:.2f} params={} steps={} median_step_ms={:.2f} min_step_ms={:.2f} fwd_ms={:.2f} "
        "bwd_ms={:.2f} opt_ms={:.2f} cpu_ms={:.2f} tokens_per_s={:.0f} allreduce_ms={:.2f} exposed_ms={:.2f} "
        "buckets={} "
        "bucket_hidden={} loss_first={:.4f} loss_last={:.4f} peak_rss_mib_rank0={:.1f}\n",
        ddp ? "kiln-ddp-mpi" : "kiln-no-ddp", world, c.threads, c.preset, c.attn, c.precision, c.T, c.d, c.layers,
        c.batch, c.dropout, model->num_parameters(), t_step.size(), med * 1e3,
        *std::min_element(t_step.begin(), t_step.end()) * 1e3, median(t_fwd) * 1e3, median(t_bwd) * 1e3,
        median(t_opt) * 1e3, median(t_cpu) * 1e3, double(c.batch * c.T) / med, median(t_comm) * 1e3,
        median(t_exposed) * 1e3, bucket_hidden.size(), hidden, first_loss, last_loss, peak_rss_mib());
  } else {
    result = fmt::format(
        "RESULT gpt impl=kiln preset={} attn={} device={} precision={} threads={} T={} d={} heads={} layers={} "
        "batch={} "
        "dropout={:.2f} "
        "params={} steps={} median_step_ms={:.2f} min_step_ms={:.2f} fwd_ms={:.2f} bwd_ms={:.2f} opt_ms={:.2f} "
        "tokens_per_s={:.0f} loss_first={:.4f} loss_last={:.4f} peak_rss_mib={:.1f} cpu_util={:.2f} "
        "minflt_per_step={:.0f} os_allocs_per_step={:.1f} peak_in_use_mib={:.1f}\n",
        c.preset, c.attn, dev.str(), c.precision, c.threads, c.T, c.d, c.heads, c.layers, c.batch, c.dropout,
        model->num_parameters(), t_step.size(), med * 1e3, *std::min_element(t_step.begin(), t_step.end()) * 1e3,
        median(t_fwd) * 1e3, median(t_bwd) * 1e3, median(t_opt) * 1e3, double(c.batch * c.T) / med, first_loss,
        last_loss, peak_rss_mib(), cpu_util, faults_per_step, os_allocs_per_step,
        double(cpu_allocator_stats().peak_in_use_bytes) / (1 << 20));
  }
  fmt::print("{}", result);
  if (!out.empty()) {
    std::FILE* f = std::fopen(out.c_str(), "a");
    if (!f) {
      fmt::print(stderr, "error: --out {}: cannot open the file for appending\n", out);
      return 1;
    }
    fmt::print(f, "{}", result);
    std::fclose(f);
  }
  return 0;
}
