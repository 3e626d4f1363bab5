#!/usr/bin/env bash
# The CUDA checks (tests marked `gpu`) against the sources in this checkout, on a machine
# with a GPU whose python3 already has torch, numpy and pytest. Writes gpu_tests.log to
# $OUT (default: benchmarks/results/). Usage: bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/benchmarks/results}
export PYTHONPATH=$root/packages/gossip-topology/src:$root/packages/gossip-comm/src:$root/packages/gossip-nn/src:$root/packages/sgp-imagenet/src
# the log names the card and the torch build, and no path of the machine it ran on
anonymise() { sed -e "s#$root#<checkout>#g" -e "s#$HOME#~#g" -e 's#-- /[^ ]*/python3*#-- python3#'; }
{ nvidia-smi -L | sed 's/ (UUID: [^)]*)//'
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"
} 2>&1 | tee "$out/gpu_tests.log"
cd "$root" && timeout 420 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 300 \
    packages/gossip-comm/tests/test_gpu.py packages/gossip-nn/tests/test_gpu.py 2>&1 | anonymise | tee -a "$out/gpu_tests.log"
# the "What real training runs need" tutorial: fp16 autocast with a GradScaler on CUDA,
# 4 processes sharing the GPU, gossip staged over gloo
python3 - "$root/docs/tutorials/real-training.md" /tmp/train_amp.py <<'PY'
import re, sys
text = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(re.search(r'```python title="train_amp.py"\n(.*?)```', text, re.S).group(1))
PY
(cd /tmp && timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 4 train_amp.py) 2>&1 \
    | grep -v "^W1\|OMP_NUM_THREADS\|\*\*\*\*" | anonymise | tee -a "$out/gpu_tests.log"
# sgp-imagenet's throughput on one GPU against a plain loop (ResNet-50, bf16,
# channels-last): needs torchvision on the machine
if python3 -c "import torchvision" 2>/dev/null; then
    (cd "$root" && timeout 420 python3 benchmarks/gpu_throughput.py --out "$out") 2>&1 | anonymise | tee -a "$out/gpu_tests.log"
else
    echo "gpu_throughput: skipped, torchvision is not installed on this machine" | tee -a "$out/gpu_tests.log"
fi
