#!/usr/bin/env bash
# One prepared GPU check: install, bench SmolVLA at the smolvla_base size on CUDA (bf16 and
# fp32, with and without the CUDA-graph denoising loop), JSON + PNG + log to $OUT.
#
#   OUT=/some/dir tools/gpu_bench.sh            (from the repository root, on a CUDA machine)
#
# A python whose torch already sees CUDA (the lent GPU machines: their image's torch, which may
# be another version than the project's 2.13.0, and no network at all) keeps it: the package is
# installed without dependencies and without asking any index (an index that cannot be reached
# costs pip's retries and timeouts, minutes where packets are dropped), and the versions found
# are logged. Only a python without a CUDA torch tries `pip install -e . torch==2.13.0`, with
# short timeouts. Nothing below needs the install: the benches run from this tree (PYTHONPATH).
# Frames are the synthetic scene (no MuJoCo rendering needed). Each bench is its own command,
# and within one a failing option row is reported and the other rows go on.
set -uo pipefail
OUT=${OUT:-gpu_bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
LOG="$OUT/gpu_bench.log"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
    if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "torch with CUDA found: installing without dependencies or an index (torch as found)"
        $PY -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check \
            -e . 2>&1 | tail -2 || true
    elif ! $PY -m pip install -q --retries 0 --timeout 10 --disable-pip-version-check \
            -e . "torch==2.13.0" 2>/dev/null; then
        echo "pip could not resolve from an index; installing without dependencies (torch as found)"
        $PY -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check \
            -e . 2>&1 | tail -2 || true
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
