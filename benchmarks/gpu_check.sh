#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the one prepared GPU check of the geometry engine (npclient.geometry).
#
# Runs, each step time-bounded, going on when one fails (its status is recorded):
#   1. installs the carried wheels (.whl/: what `import npclient` and the test conftest need
#      beyond the GPU image: orjson, pydantic, pydantic-core, annotated-types, typing-inspection,
#      typing-extensions, tenacity, starlette, uvicorn) into /tmp/site;
#   2. nvidia-smi;
#   3. the CUDA tests: tests/test_geometry_cuda.py (CUDA == CPU float32, bf16/fp16 recall);
#   4. benchmarks/gpu_check.py: device info, the CPU/GPU agreement check (24,576 x 768), the
#      131,072 x 2,304 bf16 all-pairs top-25 bench (goal < 1 s) and its fp32 twin, each against
#      a naive chunked matmul + torch.topk, then bench_geometry.py's CUDA part if time is left;
#   5. if time is left, tests/test_geometry_knn.py on the CPU of that machine (CUDA hidden:
#      these tests pass selection="heap", which is CPU-only, without device=).
# Everything is tee'd to $OUT/gpu_check.log; the figures are in $OUT/gpu_check.json (rewritten
# after every step), the shell steps' statuses in $OUT/gpu_check_steps.tsv (and merged into the
# JSON as "shell_steps"), the test reports in $OUT/pytest_cuda.xml and $OUT/pytest_knn.xml.
#
# On the GPU machine, through the device tool's `run` (from this repo's root):
#     command: bash benchmarks/gpu_check.sh      carry: [".whl"]      timeout_s: 300
# About 2.5-3.5 minutes of command time (GPU_CHECK_BUDGET_S, default 200 s, bounds it) plus the
# start. bench_geometry.py's own CUDA part (step 4's last, with its 1,048,576-row run) starts
# only with >= 75 s left in gpu_check.py's share, which the default budget rarely leaves; for it:
#     command: GPU_CHECK_BUDGET_S=320 bash benchmarks/gpu_check.sh      carry: [".whl"]      timeout_s: 420
#
# The wheels, prepared once here (the .whl folder is ignored through .git/info/exclude; ~3 MB):
#     grep -qx /.whl/ .git/info/exclude || echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
#       orjson==3.13.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 typing_extensions==4.16.0 tenacity==9.2.1 starlette==1.10.0 uvicorn==0.54.0
# (the versions of .venv; pip download with several names at once also works, one name per call is safest)
#
# A CPU simulation here (tiny sizes, nvidia-smi skipped, the CUDA tests skip unless
# NP_GEOMETRY_TEST_DEVICE=cpu runs them on CPU):
#     GPU_CHECK_DRY_RUN=1 GPU_CHECK_PYTHON=/tmp/gpusim/bin/python GPU_CHECK_WHEELS=/tmp/whl311 \
#       GPU_CHECK_SITE=/tmp/site311 OUT=/tmp/gpu_check_out bash benchmarks/gpu_check.sh
#
# Variables: OUT (default ./gpu_check_out), GPU_CHECK_DRY_RUN (1: dry run), GPU_CHECK_BUDGET_S
# (seconds for everything, default 200), GPU_CHECK_PYTHON (default python3), GPU_CHECK_WHEELS
# (default .whl), GPU_CHECK_SITE (default /tmp/site).

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
STEPS=$OUT/gpu_check_steps.tsv
: >"$LOG"
printf 'step\tstatus\treturncode\tseconds\n' >"$STEPS"
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-200}
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
left() { echo $((DEADLINE - $(date +%s))); }
say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT MIN_LEFT CMD...: run CMD under `timeout`, at most LIMIT seconds and never past
# the deadline; skipped when fewer than MIN_LEFT seconds are left. Output tee'd to the log.
step() {
    local name=$1 lim=$2 need=$3
    shift 3
    local l
    l=$(left)
    if ((l < need)); then
        say "== $name: skipped, ${l} s left (needs ${need})"
        printf '%s\tskipped\t\t0\n' "$name" >>"$STEPS"
        return 0
    fi
    ((lim > l)) && lim=$l
    say "== $name (limit ${lim} s) $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    local s rc
    s=$(date +%s)
    timeout -k 10 "$lim" "$@" 2>&1 | tee -a "$LOG"
    rc=$?
    local took=$(($(date +%s) - s)) st=ok
    ((rc == 124 || rc == 137)) && st=timeout
    ((rc != 0 && rc != 124 && rc != 137)) && st=failed
    say "== $name: $st (rc $rc) in ${took} s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$st" "$rc" "$took" >>"$STEPS"
    return 0
}

say "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, repo $REPO, budget ${BUDGET} s, dry run: ${DRY}, python: $PY"

# 1. carried wheels
shopt -s nullglob
whls=("$WHEELS"/*.whl)
if ((${#whls[@]})); then
    step wheels 60 5 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${whls[@]}"
else
    say "== wheels: none in $WHEELS (carry [\".whl\"]?)"
    printf 'wheels\tmissing\t\t0\n' >>"$STEPS"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 2. the GPU
if [[ $DRY != 1 ]]; then
    step nvidia-smi 20 5 bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv'
fi

# 3. the CUDA tests
step pytest_cuda 90 20 "$PY" -m pytest -q -rsxX -p no:cacheprovider -o faulthandler_timeout=60 \
    tests/test_geometry_cuda.py --junitxml="$OUT/pytest_cuda.xml"

# 4. agreement and benchmarks (gpu_check.py bounds each of its steps; 45 s are kept for step 5)
py_budget=$(($(left) - 45))
((py_budget > 200)) && py_budget=200
((py_budget < 30)) && py_budget=30
dry_flag=()
[[ $DRY == 1 ]] && dry_flag=(--dry-run)
step gpu_check $((py_budget + 20)) 30 "$PY" benchmarks/gpu_check.py --budget "$py_budget" --out "$OUT" "${dry_flag[@]}"

# 5. the CPU engine's tests on this machine's torch/numpy/numba, if time is left
step pytest_knn_cpu 60 35 env CUDA_VISIBLE_DEVICES= "$PY" -m pytest -q -p no:cacheprovider \
    -o faulthandler_timeout=50 tests/test_geometry_knn.py --junitxml="$OUT/pytest_knn.xml"

# the shell steps into the JSON
"$PY" - "$OUT" "$STEPS" "$(($(date +%s) - T0))" <<'EOF' 2>&1 | tee -a "$LOG"
import csv, json, sys
from pathlib import Path
out, steps, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = list(csv.DictReader(open(steps), delimiter="\t"))
p = out / "gpu_check.json"
data = json.loads(p.read_text()) if p.exists() else {"note": "gpu_check.py wrote nothing"}
data["shell_steps"] = rows
data["shell_total_s"] = total
p.write_text(json.dumps(data, indent=2))
print("steps: " + ", ".join(f"{r['step']} {r['status']}" for r in rows) + f"; {total} s in all")
print(json.dumps(data.get("summary", {}), indent=1))
EOF
say "gpu_check.sh: done in $(($(date +%s) - T0)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit 0
