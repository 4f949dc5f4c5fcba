#!/bin/sh
# make_idx.sh DIR PREFIX N: writes DIR/PREFIX-images-idx3-ubyte (N images of 28 x 28 zeros, N < 8)
# and DIR/PREFIX-labels-idx1-ubyte (N labels 0), the IDX files of Fashion-MNIST, for the vit tests.
set -eu
mkdir -p "$1"
{
  printf '\000\000\010\003\000\000\000'
  printf "\\00$3"
  printf '\000\000\000\034\000\000\000\034'
  head -c $(($3 * 784)) /dev/zero
} >"$1/$2-images-idx3-ubyte"
{
  printf '\000\000\010\001\000\000\000'
  printf "\\00$3"
  head -c "$3" /dev/zero
} >"$1/$2-labels-idx1-ubyte"
