#!/bin/sh
# A usage error under mpirun (CTest example_*_mpi_* and bench.gpt_mpi_usage): every rank meets it
# alike, so it is printed once (by rank 0), not once per rank, and the ranks end together with a
# non-zero code instead of through MPI_Abort (whose report would follow the message).
#   sh check_mpi_usage.sh "mpirun --allow-run-as-root --oversubscribe" NP TEXT PROGRAM ARGS...
set -u
mpirun=$1
np=$2
want=$3
prog=$4
shift 4
name=$(basename "$prog")
err=mpi_usage_$name.err
# shellcheck disable=SC2086  # $mpirun is a command and its flags
$mpirun -np "$np" "$prog" "$@" >/dev/null 2>"$err"
rc=$?
fail() {
  echo "FAIL ($name under mpirun -np $np): $*"
  cat "$err"
  exit 1
}
[ "$rc" -ne 0 ] || fail "$* exited with 0"
count=$(grep -cF -- "$want" "$err")
[ "$count" -eq 1 ] || fail "'$want' printed $count times"
if grep -q "MPI_ABORT" "$err"; then fail "the job ended through MPI_Abort"; fi
echo "ok: $name $* under mpirun -np $np -> printed once (exit $rc)"
