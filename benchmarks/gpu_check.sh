#!/usr/bin/env bash
# The CUDA checks (tests marked `gpu`) against the sources in this checkout, on a machine
# with a GPU whose python3 already has torch, numpy and pytest. Writes gpu_tests.log to
# $OUT (default: benchmarks/results/). Usage: bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/benchmarks/results}
export PYTHONPATH=$root/packages/gossip-topology/src:$root/packages/gossip-comm/src:$root/packages/gossip-nn/src
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"
cd "$root" && timeout 420 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 300 \
    packages/gossip-comm/tests/test_gpu.py packages/gossip-nn/tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
