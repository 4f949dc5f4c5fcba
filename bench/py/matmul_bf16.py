#!/usr/bin/env python3
"""PyTorch's square matmul in float32 and bfloat16 at n = 256..2048, for the side-by-side with
build/bench/ops_bench (same sizes, same RESULT keys; run both in one quiet window).
  PY=$(../shared/anchors/scripts/setup_torch2.sh)   # a PyTorch 2.x python
  $PY bench/py/matmul_bf16.py [threads=2] [sizes=256,512,1024,2048]
Each size: >= 1 warm-up call and 0.5 s of warm-up, then the median of the calls in ~1 s."""
import statistics
import sys
import time

import torch

kv = dict(a.split("=", 1) for a in sys.argv[1:])
threads = int(kv.get("threads", 2))
sizes = [int(x) for x in kv.get("sizes", "256,512,1024,2048").split(",")]
torch.set_num_threads(threads)
torch.manual_seed(0)
print(f"# torch {torch.__version__} threads={threads} mkldnn_bf16={torch.backends.mkldnn.is_available()}")


def median_seconds(fn):
    t0 = time.perf_counter()
    while True:
        fn()
        if time.perf_counter() - t0 > 0.5:
            break
    ts, spent = [], 0.0
    while len(ts) < 5 or spent < 1.0:
        a = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - a)
        spent += ts[-1]
        if len(ts) >= 2000:
            break
    return statistics.median(ts)


for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bf16")):
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        with torch.no_grad():
            s = median_seconds(lambda: torch.matmul(a, b))
        print(f"RESULT matmul impl=pytorch-{torch.__version__} dtype={name} n={n} threads={threads} "
              f"median_ms={s * 1e3:.3f} gflops={2.0 * n ** 3 / s / 1e9:.1f}")
