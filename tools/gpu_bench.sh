#!/usr/bin/env bash
# One prepared GPU check: install, bench SmolVLA at the smolvla_base size on CUDA (bf16 and
# fp32, with and without the CUDA-graph denoising loop), JSON + PNG + log to $OUT.
#
#   OUT=/some/dir tools/gpu_bench.sh            (from the repository root, on a CUDA machine)
#
# Installs this package with `pip install -e .`, torch pinned to the project's 2.13.0; on a
# machine that cannot reach an index (the lent GPU machines) it installs without dependencies
# and uses the torch/transformers already there, and says so. Frames are the synthetic scene
# (no MuJoCo rendering needed). Each bench is its own command, so one failing keeps the others.
set -uo pipefail
OUT=${OUT:-gpu_bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
LOG="$OUT/gpu_bench.log"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
    if ! $PY -m pip install -q -e . "torch==2.13.0" 2>/dev/null; then
        echo "pip could not resolve from an index; installing without dependencies (torch as found)"
        $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 || true
    fi
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
                                            'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

bench() {  # name dtype options
    echo "== bench $1: $2, options $3" | tee -a "$LOG"
    timeout 240 $PY -m dysta_ros.cli bench --model smolvla_base --device cuda --dtype "$2" --frames synthetic \
        --camera-size 480x640 --strategies full --history 1 --steps "$STEPS" --warmup 5 --options "$3" \
        --json "$OUT/$1.json" --quiet 2>&1 | tee -a "$LOG"
}
bench bf16 bfloat16 graphs,vision,best_gpu,steps5
bench fp32 float32 graphs,bf16
ls -l "$OUT" | tee -a "$LOG"
