#!/usr/bin/env bash
# Runs the CUDA backend and tests/cuda on a machine without a GPU, through a small emulator:
# core/cuda/*.cu and optim/*.cu are compiled as C++ (kernel launches rewritten to emu::launch),
# each block's threads run as cooperative fibers where __syncthreads and warp shuffles are real
# barriers (warp-matrix calls included),
# and include/ holds stand-ins for the CUDA runtime (one synchronous device in host memory)
# and cuBLAS (a checked reference GEMM, TF32 rounding included) and cuBLASLt (its descriptor API
# and the bias epilogue, alignment promises checked). It checks kernel logic,
# indexing, barriers and the host code; not speed, not the memory model, not real launch limits.
#
#   tests/cuda_emu/run.sh                      # every cuda* test case and the op registry's parity
#   tests/cuda_emu/run.sh -tc='cuda attention*'
#   EMU_REVERSE=1 tests/cuda_emu/run.sh        # run each block's threads in reverse order (races)
#   EMU_NO_GPU=1 tests/cuda_emu/run.sh         # the "no GPU" path
#
# Needs a configured and built KILN_CUDA=OFF build directory for the rest of kiln
# (KILN_EMU_BASE, default build-emu-base; created when missing). Output in $KILN_EMU_BASE/cuda_emu.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BASE=${KILN_EMU_BASE:-build-emu-base}
OUT=$BASE/cuda_emu
EMU=$ROOT/tests/cuda_emu

if [ ! -f "$BASE/CMakeCache.txt" ]; then
  cmake -S . -B "$BASE" -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_TEST_PATTERN='cuda/*.cpp' \
    -DKILN_BUILD_EXAMPLES=OFF -DKILN_BUILD_BENCH=OFF >/dev/null
fi
# Always brought up to date (a library older than the headers fails to link or, worse, links).
cmake --build "$BASE" -j2 --target kiln kiln_startup >/dev/null
mkdir -p "$OUT/src" "$OUT/obj" "$OUT/lib"
rm -f "$OUT"/obj/*.o
LAUNCHER=$(command -v ccache || true)
CXX=(${LAUNCHER} g++ -std=c++20 -O1 -g -fopenmp -w -I"$EMU/include" -I"$BASE/include" -I"$ROOT/tests"
     "-DKILN_TEST_DATA=\"$ROOT/tests/data\"")

# The rest of kiln, without the "built without CUDA" entry points (an archive copy: member
# names repeat across folders, so extracting them would lose some), and the libraries kiln
# links, read from the test binary's link line CMake generated for the base build.
rm -f "$OUT"/lib/*
# The optimizers' kernel tables are rebuilt below with KILN_WITH_CUDA (the base build has none).
UPDATERS=(adagrad adam lion rmsprop sgd)
cp "$BASE/libkiln.a" "$OUT/lib/libkiln_emu.a"
ar d "$OUT/lib/libkiln_emu.a" stub.cpp.o "${UPDATERS[@]/%/.cpp.o}"
mapfile -t LIBS < <(tr ' ' '\n' < "$BASE/tests/CMakeFiles/kiln_tests.dir/link.txt" |
  sed -n '/libkiln\.a$/,$p' | grep -v 'libkiln\.a$' | grep -v '\.o$' | sed "s|^\.\./|$BASE/|" | grep .)

# Two compiles at a time (the machine may be shared).
compile() {
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
  "${CXX[@]}" "$@" &
}
# Kernel sources and device headers, rewritten: launches become emu::launch of a lambda that
# calls the kernel (so template arguments are deduced as in a launch), dynamic shared memory a
# static array. The rewritten files mirror the source tree under $OUT/src, so a quoted
# #include (relative to the including file) finds the rewritten header first.
rm -rf "$OUT/src" && mkdir -p "$OUT/src"
for f in core/cuda/*.cu core/cuda/*.cuh optim/*.cu optim/*.cuh; do
  mkdir -p "$OUT/src/$(dirname "$f")"
  python3 - "$f" "$OUT/src/$f" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'extern __shared__ __align__\((\d+)\) unsigned char (\w+)\[\];', r'alignas(\1) unsigned char \2[1 << 20];', s)
s = re.sub(r'(\b[\w:]+(?:<[^<>;()]*(?:<[^<>;()]*>[^<>;()]*)*>)?)\s*<<<(.*?)>>>\(', r'emu::launch([&](auto&&... emu_a) { \1(emu_a...); }, \2)(', s, flags=re.S)
out = sys.argv[2][:-3] + ".cpp" if sys.argv[2].endswith(".cu") else sys.argv[2]
open(out, "w").write(("#include <cuda_runtime.h>\n" if out.endswith(".cpp") else "") + s)
PY
done
for f in core/cuda/*.cu optim/*.cu; do
  d=$(dirname "$f")
  compile -I"$ROOT/$d" -I"$ROOT/core/cuda" -DKILN_WITH_CUDA=1 -c "$OUT/src/${f%.cu}.cpp" -o "$OUT/obj/cu_$(basename "$f" .cu).o"
done
for b in "${UPDATERS[@]}"; do
  compile -DKILN_WITH_CUDA=1 -fno-math-errno -c "optim/$b.cpp" -o "$OUT/obj/opt_$b.o"
done
for f in core/cuda/*.cpp; do
  b=$(basename "$f" .cpp)
  [ "$b" = stub ] && continue
  compile -c "$f" -o "$OUT/obj/h_$b.o"
done
for f in tests/cuda/*.cpp tests/opinfo/*.cpp tests/main.cpp; do
  compile -c "$f" -o "$OUT/obj/t_$(basename "$f" .cpp).o"
done
wait
g++ -fopenmp -o "$OUT/emu_tests" "$OUT"/obj/*.o -Wl,--whole-archive "$OUT/lib/libkiln_emu.a" -Wl,--no-whole-archive \
  "${LIBS[@]}" -lfmt -ldl -lpthread
if [ $# -eq 0 ]; then set -- -tc='cuda*,opinfo*: cuda parity'; fi
"$OUT/emu_tests" "$@"
