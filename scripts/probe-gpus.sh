#!/usr/bin/env bash
# Prints the GPUs `drome agent` discovers through NVML on this machine (model, memory, power
# limit, NVLink peers, MIG mode), and what nvidia-smi says beside it when it is installed, so the
# two can be compared on a new GPU server before it joins a fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p drome
echo "== drome agent --probe"
./target/release/drome agent --probe
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "== nvidia-smi"
  nvidia-smi --query-gpu=index,name,memory.total,power.limit,mig.mode.current --format=csv
fi
