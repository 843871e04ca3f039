#!/usr/bin/env bash
# Make sure real Fashion-MNIST is where `cnnlab train` looks for it. Order: $CNNLAB_DATA/fashion_mnist
# (or fashion-mnist), Debian's /usr/share/datasets/fashion-mnist; if neither, install Debian's
# dataset-fashion-mnist package when apt is there and we may use it; otherwise cnnlab itself tries
# torchvision's download (which needs internet) and says where it looked if that fails.
set -euo pipefail
for d in "${CNNLAB_DATA:-/nonexistent}/fashion_mnist" "${CNNLAB_DATA:-/nonexistent}/fashion-mnist" \
         /usr/share/datasets/fashion-mnist; do
  if ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1; then echo "Fashion-MNIST found in $d"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Fashion-MNIST not found; installing Debian's dataset-fashion-mnist"
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist && exit 0
  echo "apt-get could not install dataset-fashion-mnist" >&2
fi
echo "Fashion-MNIST not found locally; cnnlab will try torchvision's download (needs internet)."
