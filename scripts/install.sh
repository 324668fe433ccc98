#!/usr/bin/env bash
# Install cdcl and everything it needs on a fresh Debian/Ubuntu machine (CPU).
# System packages: what Open3D needs to import and to render offscreen on the
# CPU through Vulkan (Mesa lavapipe). Python: torch 2.13.0 is pinned to the CPU
# build on local disk; it is installed first so that no other package can make
# pip resolve a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" "numpy<2" numba pyyaml tqdm \
  tensorboard pillow nuscenes-devkit open3d spconv-cu120 onnx onnxruntime cityscapesScripts pytest
python3 -m pip install -q --disable-pip-version-check --no-deps -e .
python3 -c "import torch, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, 'numpy', numpy.__version__)"
