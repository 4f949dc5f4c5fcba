#!/usr/bin/env bash
# Everything in kiln that needs a GPU, in one script: build with the CUDA backend, run the
# whole test suite (the tests/cuda suites compare every op and the fused attention with the
# CPU backend), then the benchmarks beside PyTorch on the same GPU in the same run:
# GEMM TFLOP/s, attention forward / forward+backward in float32/float64/bfloat16/float16 (PyTorch's
# scaled_dot_product_attention; kiln's 16-bit rows run the tensor-core kernels of attention_tc.cu),
# memory-bound ops, and the GPT training step of bench/gpt.cpp.
#
#   tools/gpu_check.sh              # build test bench (the stages in order)
#   tools/gpu_check.sh build test   # some stages: build | test | cudatest | bench | kbench | tbench | gpt
# With a short device lease, run it as two commands (~6 min each on 16 cores):
#   tools/gpu_check.sh build cudatest test      then      tools/gpu_check.sh bench
#
# Environment: KILN_GPU_BUILD (build dir, default build-gpu), KILN_CUDA_ARCH (default native),
# OUT (where logs and results.txt go; default $KILN_GPU_BUILD/gpu_check), JOBS (default nproc),
# PYTHON (a python with torch; default: the first of python3, /usr/bin/python3 that imports it).
# Exit status: non-zero when a build or a test failed.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=${KILN_GPU_BUILD:-build-gpu}
ARCH=${KILN_CUDA_ARCH:-native}
JOBS=${JOBS:-$(nproc)}
LOGDIR=${OUT:-$BUILD/gpu_check}
mkdir -p "$LOGDIR"
RESULTS="$LOGDIR/results.txt"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test bench)
status=0

say() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
want() { local s; for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local p
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then echo "$p"; return; fi
  done
}

say "machine"
nvidia-smi -L 2>&1 | tee "$LOGDIR/nvidia-smi.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOGDIR/nvidia-smi.txt"
nvcc --version 2>&1 | tail -2

if want build; then
  say "build ($BUILD, CUDA architectures $ARCH, $JOBS jobs)"
  t0=$(date +%s)
  if cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
       -DKILN_BUILD_EXAMPLES=OFF > "$LOGDIR/configure.log" 2>&1 &&
     cmake --build "$BUILD" -j"$JOBS" > "$LOGDIR/build.log" 2>&1; then
    echo "build ok in $(( $(date +%s) - t0 )) s"
  else
    echo "BUILD FAILED (see $LOGDIR/configure.log, $LOGDIR/build.log):"
    tail -40 "$LOGDIR/build.log" 2>/dev/null || tail -40 "$LOGDIR/configure.log"
    exit 1
  fi
fi

if want cudatest || want test; then
  say "tests/cuda on the GPU"
  "$BUILD/tests/kiln_tests" -tc='cuda*' 2>&1 | tee "$LOGDIR/cuda_tests.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want test; then
  say "full test suite (ctest -j$JOBS)"
  if ctest --test-dir "$BUILD" -j"$JOBS" --timeout 900 --output-on-failure > "$LOGDIR/ctest.log" 2>&1; then
    tail -3 "$LOGDIR/ctest.log"
  else
    status=1
    grep -E "Failed|\*\*\*|tests passed" "$LOGDIR/ctest.log" | tail -30
  fi
fi

run_kiln_bench() {
  say "kiln benchmarks (bench/cuda_bench)"
  "$BUILD/bench/cuda_bench" 2>&1 | tee "$LOGDIR/kiln_bench.log"
}

run_torch_bench() {
  local py
  py=$(pick_python)
  say "PyTorch benchmarks (${py:-no python with torch})"
  [ -z "$py" ] && { echo "no python with torch: PyTorch rows skipped"; return; }
  "$py" - 2>&1 <<'PY' | tee "$LOGDIR/torch_bench.log"
import time, torch, torch.nn.functional as F
dev = torch.device("cuda")
print(f"# torch {torch.__version__} on {torch.cuda.get_device_name(0)}")

def median_s(fn, setup=lambda: None):
    t0 = time.perf_counter()
    i = 0
    while i < 2 or time.perf_counter() - t0 < 0.3:
        setup(); fn(); i += 1
    torch.cuda.synchronize()
    a = time.perf_counter(); setup(); fn(); torch.cuda.synchronize()
    one = max(time.perf_counter() - a, 1e-6)
    inner = int(min(max(0.02 / one, 1), 200))
    ts, spent = [], 0.0
    while len(ts) < 15 and (len(ts) < 5 or spent < 0.8):
        a = time.perf_counter(); st = 0.0
        for _ in range(inner):
            s0 = time.perf_counter(); setup(); st += time.perf_counter() - s0
            fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - a
        ts.append((dt - st) / inner); spent += dt
    ts.sort()
    return ts[len(ts) // 2]

# GEMM: the rows of bench/cuda_bench.cpp
rows = [(torch.float32, tf, 1, n, n, n) for n in (1024, 2048, 4096, 8192) for tf in (False, True)]
rows += [(torch.float32, False, 64, 512, 512, 512), (torch.float32, True, 64, 512, 512, 512)]
rows += [(torch.float64, False, 1, n, n, n) for n in (2048, 4096)]
for dt, tf, B, M, N, K in rows:
    torch.backends.cuda.matmul.allow_tf32 = tf
    a = torch.randn((B, M, K) if B > 1 else (M, K), device=dev, dtype=dt)
    b = torch.randn((B, K, N) if B > 1 else (K, N), device=dev, dtype=dt)
    with torch.no_grad():
        s = median_s(lambda: torch.matmul(a, b))
    print(f"RESULT cuda_matmul impl=torch dtype={str(dt).split('.')[1]} tf32={int(tf)} B={B} M={M} N={N} K={K} "
          f"median_ms={s*1e3:.4f} tflops={2*B*M*N*K/s/1e12:.2f}", flush=True)
torch.backends.cuda.matmul.allow_tf32 = False

# Attention core: (B, T, E) buffers viewed (B, H, T, D), as in bench/cuda_bench.cpp
mha_rows = [(32, 64, 128, 4), (8, 256, 256, 8), (8, 1024, 768, 12), (4, 2048, 1024, 16), (1, 4096, 256, 8)]
for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for B, T, E, H in mha_rows:
        if dt == torch.float64 and T > 1024:
            continue
        D = E // H
        for causal in (False, True):
            for mode in ("fwd", "fwdbwd"):
                heads = lambda x: x.view(B, T, H, D).transpose(1, 2)
                qb, kb, vb = (torch.randn(B, T, E, device=dev, dtype=dt) for _ in range(3))
                gy = torch.randn(B, H, T, D, device=dev, dtype=dt)
                try:
                    if mode == "fwd":
                        with torch.no_grad():
                            q, k, v = heads(qb), heads(kb), heads(vb)
                            s = median_s(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                    else:
                        for t in (qb, kb, vb):
                            t.requires_grad_()
                        def step():
                            o = F.scaled_dot_product_attention(heads(qb), heads(kb), heads(vb), is_causal=causal)
                            o.backward(gy)
                        def reset():
                            for t in (qb, kb, vb):
                                t.grad = None
                        s = median_s(step, reset)
                except (RuntimeError, AttributeError) as e:  # no kernel for this dtype / torch < 2.0
                    print(f"# torch sdpa {dt} B={B} T={T} failed: {str(e).splitlines()[0]}")
                    continue
                pairs = B * H * T * T * (0.5 if causal else 1.0)
                flop = 4.0 * pairs * D * (1 if mode == "fwd" else 3.5)
                print(f"RESULT mha impl=torch_sdpa scope=core device=cuda B={B} T={T} E={E} H={H} causal={int(causal)} "
                      f"mode={mode} dtype={str(dt).split('.')[1]} median_ms={s*1e3:.4f} tflops={flop/s/1e12:.2f}", flush=True)

# Memory-bound ops: the rows of bench/cuda_bench.cpp
n = 1 << 26
x, y = torch.randn(n, device=dev), torch.randn(n, device=dev)
rows2 = torch.randn(32768, 1024, device=dev)
w, b, bias = (torch.randn(1024, device=dev) for _ in range(3))
f = 4.0
ops = [("add", 3*f*n, lambda: x + y), ("add_bias_broadcast", 3*f*rows2.numel(), lambda: rows2 + bias),
       ("gelu", 2*f*n, lambda: F.gelu(x)), ("sum", f*n, lambda: x.sum()),
       ("sum_rows", f*rows2.numel(), lambda: rows2.sum(-1)), ("sum_cols", f*rows2.numel(), lambda: rows2.sum(0)),
       ("transpose_copy", 2*f*rows2.numel(), lambda: rows2.t().contiguous()),
       ("softmax", 2*f*rows2.numel(), lambda: torch.softmax(rows2, -1)),
       ("layer_norm", 2*f*rows2.numel(), lambda: F.layer_norm(rows2, (1024,), w, b)),
       ("dropout", 3*f*n, lambda: F.dropout(x, 0.1, True))]
with torch.no_grad():
    for name, by, fn in ops:
        s = median_s(fn)
        print(f"RESULT cuda_op impl=torch op={name} dtype=float32 median_ms={s*1e3:.4f} gb_per_s={by/s/1e9:.1f}", flush=True)
    s1 = torch.randn(1, device=dev)
    s = median_s(lambda: s1 + s1)
    print(f"RESULT cuda_op impl=torch op=tiny_add dtype=float32 median_us={s*1e6:.2f}")
PY
}

run_gpt() {
  say "GPT training step (bench/gpt.cpp's model) on the GPU: kiln, then PyTorch"
  if [ -x "$BUILD/bench/gpt" ]; then
    for preset in small shakespeare; do
      "$BUILD/bench/gpt" --device cuda --preset "$preset" 2>&1 | tee -a "$LOGDIR/gpt.log"
    done
  else
    echo "no $BUILD/bench/gpt: kiln rows skipped"
  fi
  local py
  py=$(pick_python)
  [ -z "$py" ] && { echo "no python with torch: PyTorch rows skipped"; return; }
  for preset in small shakespeare; do
    for attn in manual sdpa; do
      "$py" - "$preset" "$attn" 2>&1 <<'PY' | tee -a "$LOGDIR/gpt.log"
# The model of bench/gpt.cpp (and ../shared/anchors/src/gpt_bench.py) on CUDA: same sizes, init,
# AdamW, data generator and step definition; attn=manual (matmul/softmax) or sdpa (fused).
import math, sys, time, torch, torch.nn as nn, torch.nn.functional as F
preset, attn = sys.argv[1], sys.argv[2]
c = dict(vocab=65, T=64, d=128, heads=4, layers=4, batch=32, dropout=0.1, lr=3e-4, steps=50, warmup=5, seed=1337)
if preset == "shakespeare":
    c.update(T=256, d=384, heads=6, layers=6, batch=16, steps=10, warmup=2)
dev = torch.device("cuda")
if attn == "sdpa" and not hasattr(F, "scaled_dot_product_attention"):
    sys.exit(print(f"# torch {torch.__version__} has no scaled_dot_product_attention: attn=sdpa skipped"))
M64 = (1 << 64) - 1
class Mix:
    def __init__(self, s): self.s = s & M64
    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
def data(n, vocab, seed):
    r, d = Mix(seed), [0] * n
    for i in range(n - 1):
        x = r.next()
        d[i + 1] = (7 * d[i] + 3) % vocab if x % 10 else (x >> 8) % vocab
    return d
class Attn(nn.Module):
    def __init__(s):
        super().__init__()
        s.qkv, s.proj = nn.Linear(c["d"], 3 * c["d"]), nn.Linear(c["d"], c["d"])
        s.adrop, s.rdrop = nn.Dropout(c["dropout"]), nn.Dropout(c["dropout"])
        s.register_buffer("mask", torch.full((c["T"], c["T"]), float("-inf")).triu(1))
    def forward(s, x):
        B, T, d = x.shape
        H = c["heads"]
        q, k, v = (t.view(B, T, H, d // H).transpose(1, 2) for t in s.qkv(x).split(d, 2))
        if attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=c["dropout"] if s.training else 0.0, is_causal=True)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // H) + s.mask[:T, :T], -1)
            y = s.adrop(a) @ v
        return s.rdrop(s.proj(y.transpose(1, 2).reshape(B, T, d)))
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.ln1, s.attn, s.ln2 = nn.LayerNorm(c["d"]), Attn(), nn.LayerNorm(c["d"])
        s.fc, s.out, s.drop = nn.Linear(c["d"], 4 * c["d"]), nn.Linear(4 * c["d"], c["d"]), nn.Dropout(c["dropout"])
    def forward(s, x):
        x = x + s.attn(s.ln1(x))
        return x + s.drop(s.out(F.gelu(s.fc(s.ln2(x)))))
class GPT(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe, s.drop = nn.Embedding(c["vocab"], c["d"]), nn.Embedding(c["T"], c["d"]), nn.Dropout(c["dropout"])
        s.blocks = nn.ModuleList(Block() for _ in range(c["layers"]))
        s.ln_f, s.head = nn.LayerNorm(c["d"]), nn.Linear(c["d"], c["vocab"], bias=False)
        with torch.no_grad():
            for n_, p in s.named_parameters():
                if "ln" in n_: continue
                p.zero_() if n_.endswith("bias") else p.normal_(0.0, 0.02)
    def forward(s, idx):
        x = s.drop(s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device)))
        for b in s.blocks: x = b(x)
        return s.head(s.ln_f(x))
torch.manual_seed(c["seed"])
model = GPT().to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
d_t = torch.tensor(data(200000, c["vocab"], c["seed"]), dtype=torch.int64)
rng, span = Mix(c["seed"] + 1), 200000 - c["T"] - 1
ts = []
for step in range(c["warmup"] + c["steps"]):
    offs = torch.tensor([rng.next() % span for _ in range(c["batch"])])
    idx = offs[:, None] + torch.arange(c["T"])[None, :]
    x, y = d_t[idx].to(dev), d_t[idx + 1].to(dev)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x).view(-1, c["vocab"]), y.view(-1))
    loss.backward()
    opt.step()
    lv = loss.item()
    if step == 0: first = lv
    if step >= c["warmup"]: ts.append(time.perf_counter() - t0)
ts.sort()
med = ts[len(ts) // 2]
print(f"RESULT gpt impl=pytorch-cuda preset={preset} attn={attn} device=cuda T={c['T']} d={c['d']} heads={c['heads']} "
      f"layers={c['layers']} batch={c['batch']} dropout={c['dropout']:.2f} median_step_ms={med*1e3:.2f} "
      f"tokens_per_s={c['batch']*c['T']/med:.0f} loss_first={first:.4f} loss_last={lv:.4f}", flush=True)
PY
    done
  done
}

if want bench || want kbench; then run_kiln_bench; fi
if want bench || want tbench; then run_torch_bench; fi
if want bench || want gpt; then run_gpt; fi

# Side by side: every RESULT line, then kiln / torch pairs of the same row.
cat "$LOGDIR"/kiln_bench.log "$LOGDIR"/torch_bench.log "$LOGDIR"/gpt.log 2>/dev/null | grep '^RESULT' > "$RESULTS" || true
if [ -s "$RESULTS" ]; then
  say "kiln vs PyTorch ($RESULTS)"
  py=$(pick_python)
  ${py:-python3} - "$RESULTS" <<'PY' || true
import sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    f = line.split()
    kv = dict(x.split("=", 1) for x in f[2:] if "=" in x)
    impl = kv.pop("impl", "?")
    val = kv.pop("tflops", None) or kv.pop("gb_per_s", None) or kv.pop("median_step_ms", None) or kv.pop("median_us", None)
    for k in ("median_ms", "min_ms", "tokens_per_s", "loss_first", "loss_last", "peak_rss_mib", "threads", "reps",
              "scope", "setup_rss_mib", "cpu_util", "fwd_ms", "bwd_ms", "opt_ms", "min_step_ms", "params", "steps"):
        kv.pop(k, None)
    key = f[1] + " " + " ".join(f"{k}={v}" for k, v in sorted(kv.items()) if k not in ("attn",))
    rows.setdefault(key, {})[impl + (f"/{kv.get('attn')}" if "attn" in kv else "")] = val
for key, v in rows.items():
    print(f"{key:95s} " + "  ".join(f"{k}={x}" for k, x in v.items()))
PY
fi
exit $status
