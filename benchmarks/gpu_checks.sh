#!/usr/bin/env bash
# The GPU checks the open issues ask for, as one prepared command for the `device` tool (15 minutes of device time
# per session, the machine's start included). Here, first: `bash tools/gpu/wheels.sh`. Then one call:
#     run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=570)
# Steps, each with its own time limit so that one slow step cannot use up the others (limits 510 s in all):
#   tests/test_gpu.py (GPU and CPU agree); a Lite0 trace with `group` and `obc` (#35: obc <= 2 s); the class
#   visualization at 512 steps (#37: <= 10 s); ResNet-50 with 1024 views, `group` (#35: <= 1.5 s end to end), then
#   `obc` (#35: <= 30 s). Each step's output goes to $OUT/<step>.log (what the tool brings back) and its tail here.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=.
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=.:/tmp/site || exit 1
fi

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s), $(date -u +%H:%M:%S) UTC"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    tail -n 30 "$OUT/$name.log"
    echo "== $name: exit $status$([ $status = 124 ] && echo ' (time limit)')"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, timm, captum, zennit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"
step gpu-tests 150 "$PY" -m pytest -q -W ignore -p no:cacheprovider tests/test_gpu.py
step trace-lite0 90 "$PY" benchmarks/bench_trace.py --device cuda --models efficientnet_lite0 --solver group,obc
step featurevis 90 "$PY" benchmarks/bench_featurevis.py --device cuda --steps 512 --repeat 2
step trace-resnet50-group 60 "$PY" benchmarks/bench_trace.py --device cuda --models resnet50 --solver group
step trace-resnet50-obc 120 "$PY" benchmarks/bench_trace.py --device cuda --models resnet50 --solver obc --no-resolve
