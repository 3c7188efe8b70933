#!/usr/bin/env bash
# The GPU run in one command (under 8 minutes on one H100): writes docs/benchmarks/gpu.md.
#   bash benchmarks/gpu.sh              # on a GPU machine
#   bash benchmarks/gpu.sh --dry-run    # every part on the CPU at toy size (tests/test_gpu_bench.py)
# Options: --out FILE, --parts mfu,stream,events,tft,serve. What each part measures: benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu "$@"
