#!/bin/sh
# Installs what kiln needs on Debian/Ubuntu (bookworm or newer). Uses sudo when not root.
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="cmake make g++ libeigen3-dev libfmt-dev doctest-dev libcli11-dev libopenblas0-openmp ccache libdnnl-dev zlib1g-dev libcairo2-dev openmpi-bin libopenmpi-dev fortunes dataset-fashion-mnist"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "kiln: installing$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
else
  echo "kiln: all build dependencies are installed"
fi
