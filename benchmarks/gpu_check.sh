#!/usr/bin/env bash
# slimsr's GPU check (issue 17): one table with
#   - training throughput of SwinIRmini x2 and EDSRmini x2 through `slimsr train`'s own step,
#     batch 16 of 64 px LR patches, bf16, eager and with torch.compile (compile time apart),
#   - `slimsr profile` on CUDA of FMEN-S x4 vs E-RFDN x4 next to the FMEN paper's Table 4,
#   - `slimsr upscale` of a 960x540 image to 3840x2160 on CUDA,
#   - a 2-rank DDP run (torchrun, NCCL) when the machine has two GPUs or more.
# Each part runs in its own process under its own `timeout`; a part that fails, hangs or finds
# no time left becomes FAILED rows with a one-line reason instead of ending the table. The
# whole run stays within GPU_CHECK_BUDGET_S (default 450 s, under 8 minutes).
#
# Assumptions (a bare GPU machine holding only this repository, no network):
#   - a Python with a CUDA build of torch on PATH as python3 or python, or PYTHON=/path/python
#     (on the device tool's machines: python3, torch 2.11 + CUDA 13);
#   - slimsr is not installed there: src/ goes on PYTHONPATH;
#   - slimsr's dependencies numpy, pillow, safetensors, typer, rich and pyyaml are there, but
#     pydantic may not be (the device image's package list has none). Then, where pip has an
#     index, run `bash benchmarks/gpu_check.sh --fetch-wheels` first: it saves pydantic and
#     its dependencies as cp312 x86-64 wheels in .whl/ (in .gitignore), which this script
#     installs with `pip --no-index` into a folder under /tmp. Without pydantic every part
#     fails with "No module named 'pydantic'" (slimsr's CLI loads its train command);
#   - coreutils `timeout`; nothing is downloaded and nothing outside /tmp and the output folder
#     is written.
#
# Usage:
#   bash benchmarks/gpu_check.sh --fetch-wheels     # once, here, before lending a GPU
#   bash benchmarks/gpu_check.sh                    # on the GPU machine
#   device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   bash benchmarks/gpu_check.sh --device cpu --quick   # other arguments go to gpu_check.py
# Output: the markdown table on stdout; gpu_check.json, gpu_check.md and gpu_check.log in $OUT
# when it is set (the device tool returns what is there), else in benchmarks/results/.
# Environment: PYTHON, OUT, GPU_CHECK_BUDGET_S, GPU_CHECK_PARTS (a space-separated subset),
# GPU_CHECK_TIMEOUT_S (one limit for every part, instead of each part's own).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-450}
RESERVE=20 # seconds kept for the report
# run order: the quick parts first, SwinIRmini (inductor took 139 s to compile its training
# step on one loaded CPU core) last, so a slow compile cannot starve the rest of the table
ALL_PARTS="profile upscale ddp train-edsrmini train-swinirmini"
declare -A LIMIT=([profile]=60 [upscale]=60 [ddp]=90 [train-edsrmini]=120 [train-swinirmini]=240)

pick_python() {
    local c
    for c in ${PYTHON:-} python3 python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

if ! PY=$(pick_python); then
    echo "FAILED: no python with torch on PATH (python3, python; or set PYTHON=)" >&2
    exit 1
fi

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # pydantic and what it needs, pinned to the versions this environment runs, for CPython
    # 3.12 on x86-64 Linux (the device image); GPU_CHECK_WHEEL_PY picks another version.
    pins=$("$PY" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("pydantic", "pydantic-core", "annotated-types",
      "typing-inspection", "typing-extensions")))')
    mkdir -p .whl
    # shellcheck disable=SC2086
    "$PY" -m pip download --no-deps --only-binary=:all: --implementation cp \
        --python-version "${GPU_CHECK_WHEEL_PY:-3.12}" --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
    ls -l .whl
    exit 0
fi

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DEPS='import numpy, PIL, safetensors, typer, rich, yaml, pydantic'
if ! "$PY" -c "$DEPS" >/dev/null 2>&1 && compgen -G ".whl/*.whl" >/dev/null; then
    SITE=/tmp/slimsr_gpu_check_site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl >&2; then
        export PYTHONPATH="$PYTHONPATH:$SITE" # after src/ and what is there already
        if ! "$PY" -c "$DEPS" >/dev/null 2>&1; then
            export PYTHONPATH="$SITE:$PYTHONPATH" # e.g. a typing-extensions too old for pydantic
        fi
    fi
fi
if ! "$PY" -c "$DEPS" >/dev/null 2>&1; then
    echo "warning: $("$PY" -c "$DEPS" 2>&1 | tail -n 1); the parts will fail (pydantic: run" \
        "'bash benchmarks/gpu_check.sh --fetch-wheels' where pip has an index, carry .whl)" >&2
fi

OUTDIR=${OUT:-$REPO/benchmarks/results}
mkdir -p "$OUTDIR"
ROWS=$(mktemp -d /tmp/gpu_check_rows.XXXXXX)
LOG=$OUTDIR/gpu_check.log
: >"$LOG"
echo "python: $(command -v "$PY") ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -n 1))" | tee -a "$LOG" >&2

run_part() {
    local part=$1
    shift
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    local limit=${GPU_CHECK_TIMEOUT_S:-${LIMIT[$part]}}
    if ((left < 15)); then
        echo "not run: ${left} s of the ${BUDGET} s budget left" >"$ROWS/$part.failed"
        return 0
    fi
    if ((limit > left)); then
        limit=$left
    fi
    echo "== $part (limit ${limit} s, $((SECONDS - START)) s elapsed)" | tee -a "$LOG" >&2
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$PY" benchmarks/gpu_check.py --part "$part" --rows "$ROWS" "$@" \
        >>"$LOG" 2>&1 || rc=$?
    echo "== $part: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG" >&2
    if ((rc == 124 || rc == 137)); then
        echo "timed out after ${limit} s (see gpu_check.log)" >"$ROWS/$part.failed"
    elif ((rc != 0)) && [[ ! -s "$ROWS/$part.failed" ]]; then
        local last
        last=$(grep -v '^\s*$' "$LOG" | grep -v '^== ' | tail -n 1 | cut -c1-240 || true)
        echo "exit code $rc: ${last:-no output}" >"$ROWS/$part.failed"
    fi
    return 0
}

for part in ${GPU_CHECK_PARTS:-$ALL_PARTS}; do
    if [[ -z "${LIMIT[$part]+set}" ]]; then
        echo "unknown part $part (parts: $ALL_PARTS)" >&2
        exit 2
    fi
done
for part in $ALL_PARTS; do
    if [[ " ${GPU_CHECK_PARTS:-$ALL_PARTS} " == *" $part "* ]]; then
        run_part "$part" "$@"
    else
        echo "not run: not in GPU_CHECK_PARTS" >"$ROWS/$part.failed"
    fi
done

"$PY" benchmarks/gpu_check.py --report "$ROWS" --json "$OUTDIR/gpu_check.json" 2>>"$LOG"
rm -rf "$ROWS"
echo "total $((SECONDS - START)) s of a ${BUDGET} s budget; log: $LOG" >&2
