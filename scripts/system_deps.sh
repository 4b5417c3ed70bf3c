#!/usr/bin/env bash
# Check (and, as root or with passwordless sudo, install) the Debian packages the project needs:
#   dataset-fashion-mnist  the embedded default data set       (required)
#   Java 17+               the TorchServe frontend              (required)
#   opencv-doc             sample photos for the classifier     (recommended)
#   curl                   the README's plain-TorchServe commands and their test
#   iperf3, iputils-ping   the network emulator's self-check    (optional: Python probes otherwise)
# Fast when everything is present: it only looks at files.
set -euo pipefail

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PHOTOS=/usr/share/doc/opencv-doc/examples/data/baboon.jpg

missing=()
[ -f "$FMNIST" ] || missing+=(dataset-fashion-mnist)
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
[ -f "$PHOTOS" ] || missing+=(opencv-doc)
command -v curl >/dev/null 2>&1 || missing+=(curl)
optional=()
command -v iperf3 >/dev/null 2>&1 || optional+=(iperf3)
command -v ping >/dev/null 2>&1 || optional+=(iputils-ping)
if [ ${#missing[@]} -eq 0 ]; then
  # optional tools: try once, never fail the install for them
  if [ ${#optional[@]} -gt 0 ] && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${optional[@]}" \
      >/dev/null 2>&1 || echo "note: ${optional[*]} not installed; the network self-check uses Python probes" >&2
  fi
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "       install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2; then
  echo "error: apt-get could not install ${missing[*]}; install them by hand and re-run" >&2
  exit 1
fi
if [ ${#optional[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null 2>&1 \
    || echo "note: ${optional[*]} not installed; the network self-check uses Python probes" >&2
fi
