#!/bin/sh
# The flag set every example shares (CTest example_<name>_flags): --help lists each common flag,
# and a bad value or an unknown flag stops the program before any work with exactly one line on
# stderr (nothing on stdout) and a non-zero exit code.
#   sh check_flags.sh build/examples/reverse
set -u
prog=$1
name=$(basename "$prog")
out=flags_$name.out
err=flags_$name.err
fail() {
  echo "FAIL ($name): $*"
  exit 1
}
help=$("$prog" --help) || fail "--help exits with an error"
for flag in --device --steps --batch --lr --seed --threads --out --eval-every --precision; do
  echo "$help" | grep -q -- "$flag" || fail "--help does not list $flag"
done

# expect_error TEXT ARGS...: the program run with ARGS fails with one line containing TEXT.
expect_error() {
  want=$1
  shift
  "$prog" "$@" >"$out" 2>"$err"
  rc=$?
  [ "$rc" -ne 0 ] || fail "$* exited with 0"
  [ ! -s "$out" ] || fail "$* printed on stdout: $(cat "$out")"
  [ "$(wc -l <"$err")" -eq 1 ] || fail "$* printed $(wc -l <"$err") lines on stderr: $(cat "$err")"
  grep -qF -- "$want" "$err" || fail "$*: expected '$want', got: $(cat "$err")"
  echo "ok: $* -> $(cat "$err") (exit $rc)"
}
expect_error "--steps: -3 must be at least 1" --steps -3
expect_error "--steps: 99999999999999999999 is too large" --steps 99999999999999999999
expect_error "--steps: 2.5 is not a whole number" --steps 2.5
expect_error "--batch: 0 must be at least 1" --batch 0
expect_error "--lr: 0 must be greater than 0" --lr 0
expect_error "--lr: inf is not a finite number" --lr inf
expect_error "--lr: fast is not a number" --lr fast
expect_error "--threads: 2000 must be at most 1024" --threads 2000
expect_error "--seed: -1 must be at least 0" --seed -1
expect_error "--eval-every: -1 must be at least 0" --eval-every -1
expect_error "--device: gpu not in" --device gpu
expect_error "--precision: fp8 not in" --precision fp8
expect_error "unknown arguments, in the order given: --zeta 1 --alpha" --zeta 1 --alpha
rm -f "$out" "$err"
echo "flags ok"
