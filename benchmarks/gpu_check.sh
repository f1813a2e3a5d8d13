#!/usr/bin/env bash
# The one prepared GPU check, for a machine with a GPU (see docs/results.md):
#   1. the card, driver and torch seen;
#   2. FPS at 1024x2048, batch 1, of the default-space stand-in derived net (the genotype
#      benchmarks/bench_peers.py derives from an untrained supernet, seed 0, so the numbers sit
#      beside the CPU table) and of the torchvision peers, interleaved, fp32 and fp16;
#   3. the CUDA search step: benchmarks/supernet_step.py --device cuda (fast vs naive DARTS
#      mixed op, batch 8, 184x240; peak memory = torch.cuda.max_memory_allocated).
# Runs from the repository root without installing gasnas (PYTHONPATH=src): the GPU machine has
# torch, torchvision, onnxruntime, matplotlib, tqdm, pyyaml and numpy, and no network.
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (default OUT: runs/gpu_check)
# Five files come out (the device tool returns at most 8): gpu_check.log (everything printed),
# default_genotype.json, bench_1024x2048_{fp32,fp16}.json, supernet_step.json. A step that fails
# leaves the others' results; the exit status is 1 if any failed.
# Smoke test on a CPU: DEVICE=cpu INPUT=128x256 DTYPES=fp32 RUNS=2 WARMUP=1 PAIRS=1 STEPS=0 \
#   SIZE=64x96 BATCH=2 bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-cuda} INPUT=${INPUT:-1024x2048} DTYPES=${DTYPES:-fp32 fp16}
RUNS=${RUNS:-50} WARMUP=${WARMUP:-10} PAIRS=${PAIRS:-20} STEPS=${STEPS:-3} SIZE=${SIZE:-184x240} BATCH=${BATCH:-8}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || status=1

$PY - "$OUT" <<'EOF' || status=1
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from bench_peers import derived_genotype

_, origin = derived_genotype(None, Path(sys.argv[1]))
print(origin)
EOF

for dtype in $DTYPES; do
  echo "== gasnas bench, $DEVICE, $INPUT, $dtype"
  $PY -m gasnas bench -g "$OUT/default_genotype.json" --device "$DEVICE" --input "$INPUT" --dtype "$dtype" \
    --baselines --warmup "$WARMUP" --runs "$RUNS" --json "$OUT/bench_${INPUT}_$dtype.json" || status=1
done

echo "== supernet search step, $DEVICE"
$PY benchmarks/supernet_step.py --device "$DEVICE" --pairs "$PAIRS" --steps "$STEPS" --size "$SIZE" \
  --batch "$BATCH" --json "$OUT/supernet_step.json" || status=1
echo "gpu_check: exit $status"
exit $status
