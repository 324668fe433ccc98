#!/usr/bin/env bash
# Install everything, then run the main job on generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
cdcl demo --out demo_out "$@"
