#!/usr/bin/env bash
# Run every CUDA path of trainer_tune once on one GPU (H100/H200) and write a summary of figures.
#
#   bash benchmarks/gpu_check.sh                  # summary in $OUT if set, else ./gpu_check_out
#   bash benchmarks/gpu_check.sh DEST             # summary in DEST
#   bash benchmarks/gpu_check.sh --fetch-wheels   # on a machine with internet: hydra/omegaconf wheels into .whl/
#
# Steps, in this order, each under its own `timeout` and all within GPU_CHECK_BUDGET_S (default 420 s; a step
# that no longer fits is skipped and says so): the device and NVML/GPM probe, a world-size-1 nccl group, the
# GPT-2-small sweep in bf16 (CUDA events, allocator peaks, NVML, GPM, MFU), one of its settings by a plain
# hand-written loop (the same rate, no synchronisation inside the timed steps), torch.compile on CUDA, a real OOM
# found by strategy=power under an 8 GiB cap, fault=oom, precision fp32/bf16/fp16, 2 ranks on one GPU over
# gloo (DDP on CUDA), native sparse attention, the gpu-marked tests. A failed step does not stop the others.
#
# DEST gets summary.md, summary.json (pass/fail per path, with figures), gpu_check.log (every step's output)
# and runs.tar.gz (each sweep's trials.jsonl, recommendation.json, report.md, logs). Exit 0 when every step
# passed, 1 when one failed, 2 when the environment is incomplete, 3 without a CUDA device (one line, fast).
# GPU_CHECK_STEPS="compile oom_power" runs only the steps named (a rerun of the failed ones, say).
#
# The GPU machine needs torch with CUDA; trainer_tune is used from this checkout (PYTHONPATH, no install).
# hydra-core, omegaconf and antlr4 are installed from wheels in GPU_CHECK_WHEELS (default .whl/ here) when
# they are missing; wandb is not needed (every run has wandb=off).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
MIN_STEP_S=20

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # Pure-Python wheels, so the GPU machine's Python version does not matter. antlr4 4.9.3 ships as a source
    # archive only: pip wheel builds its (pure-Python) wheel here.
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" hydra-core==1.3.8 omegaconf==2.3.1 &&
        "$PYTHON" -m pip wheel --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3
    exit $?
fi

DEST="${1:-${OUT:-$PWD/gpu_check_out}}"
mkdir -p "$DEST" || { echo "gpu_check: cannot create $DEST" >&2; exit 2; }
DEST="$(cd "$DEST" && pwd)"
cd "$REPO" || exit 2
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT  # what is worth keeping goes to DEST (runs.tar.gz)
LOG="$DEST/gpu_check.log"
STEPS="$WORK/steps.tsv"
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1

# 1. CUDA, or stop here with one line (only torch is needed for this).
"$PYTHON" "$HERE/gpu_check.py" device --work "$WORK" 2>>"$LOG"
rc=$?
if ((rc != 0)); then
    line="$(grep '^gpu_check: ' "$LOG" | tail -n 1)"
    if ((rc != 3)) || [[ -z "$line" ]]; then
        line="gpu_check: the device probe failed (exit $rc): see $LOG"
        rc=2
    fi
    echo "$line" >&2
    exit "$rc"
fi

# 2. What trainer_tune needs beside torch (the GPU image has no hydra-core or omegaconf).
if ! "$PYTHON" -c 'import hydra, omegaconf' >/dev/null 2>&1; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import hydra, omegaconf, trainer_tune' >>"$LOG" 2>&1; then
    echo "gpu_check: hydra-core/omegaconf missing and no usable wheels in $WHEELS: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where pip reaches PyPI and carry .whl" >&2
    exit 2
fi

DEADLINE=$((SECONDS + BUDGET_S))

# step NAME CAP_S COMMAND...: run COMMAND under `timeout` (CAP_S, or what is left of the budget), append its
# output to the log and a line to steps.tsv; never stops the script.
step() {
    local name="$1" cap_s="$2"
    shift 2
    if [[ -n "${GPU_CHECK_STEPS:-}" && " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        return
    fi
    local left_s=$((DEADLINE - SECONDS))
    if ((left_s < MIN_STEP_S)); then
        printf '%s\tskipped\t0\t0\t%s\n' "$name" "$*" >>"$STEPS"
        echo "gpu_check: $name skipped (budget spent)" >&2
        return
    fi
    local limit_s=$((cap_s < left_s ? cap_s : left_s)) start_s=$SECONDS rc
    echo "=== $name (limit ${limit_s} s): $*" >>"$LOG"
    timeout --kill-after=15 "$limit_s" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start_s))" "$limit_s" "$*" >>"$STEPS"
    echo "gpu_check: $name exit $rc after $((SECONDS - start_s)) s" >&2
}

# tune NAME CAP_S OVERRIDES...: one single-process sweep writing to WORK/runs/NAME.
tune() {
    local name="$1" cap_s="$2"
    shift 2
    step "$name" "$cap_s" "$PYTHON" -m trainer_tune wandb=off "hydra.run.dir=$WORK/runs/$name" "$@"
}

ONE_ROUND=(sweep.min_rounds=1 sweep.max_rounds=1)
GPT=(model=gpt_125m train=gpu_bf16 +sweep=batch_gpu)
OOM_CAP_GIB=8
oom_fraction="$("$PYTHON" "$HERE/gpu_check.py" fraction --work "$WORK" --cap-gib "$OOM_CAP_GIB")"

# nccl cannot put two ranks on one GPU: one rank checks the nccl group and trainer_tune's collectives on it.
step nccl 45 "$PYTHON" "$HERE/gpu_check.py" nccl --work "$WORK"
tune gpt_125m_bf16 110 "${GPT[@]}" 'sweep.micro_batch_sizes=[8,16]' 'sweep.grad_accums=[1,2]' \
    sweep.min_rounds=2 sweep.max_rounds=2
# The sweep's 8x1 bf16 setting again, by a plain hand-written loop (benchmarks/plain_loop.py: one synchronisation
# at each end of its timed steps, torch's sync detector on between them). The summary sets trainer_tune's tokens/s
# beside the loop's. The shape is configs/model/gpt_125m.yaml's (the summary checks the parameter counts agree).
step plain_loop 60 "$PYTHON" "$HERE/plain_loop.py" --out "$WORK/runs/plain_loop/plain_loop.json" \
    --micro-batch-size 8 --grad-accum 1 --precision bf16 --vocab-size 50304 --seq-len 1024 --d-model 768 \
    --n-layers 12 --n-heads 12 --mlp-ratio 4 --warmup 5 --steps 30 --repeats 3
# Compiling GPT-2 small takes the longest and is the least predictable step: early, so it gets its full limit.
tune compile 150 "${GPT[@]}" 'sweep.micro_batch_sizes=[8]' 'sweep.grad_accums=[1]' 'sweep.compile=[false,true]' \
    "${ONE_ROUND[@]}"
# Doubling from micro-batch 4 under an 8 GiB allocator cap until the allocator raises: GPT-2 small at 1024
# tokens needs about 5 GiB at micro-batch 4 and well over 8 GiB by 16.
tune oom_power 120 "${GPT[@]}" sweep.strategy=power train.micro_batch_size=4 'sweep.micro_batch_sizes=[4]' \
    'sweep.grad_accums=[1]' sweep.max_micro_batch_size=128 sweep.power_patience=8 sweep.min_rounds=2 \
    sweep.max_rounds=12 sweep.budget_s=null "train.max_memory_fraction=$oom_fraction"
tune fault_oom 50 model=tiny +sweep=batch 'sweep.micro_batch_sizes=[2,4]' 'sweep.grad_accums=[1]' \
    "${ONE_ROUND[@]}" fault=oom fault.rank=0 fault.trial=1
tune precision 80 "${GPT[@]}" 'sweep.micro_batch_sizes=[8]' 'sweep.grad_accums=[1]' \
    'sweep.precision=[fp32,bf16,fp16]' "${ONE_ROUND[@]}"
# DDP on CUDA tensors with two ranks (gloo, as nccl would refuse the shared device): exposed comm, noise steps.
step ddp_gloo_cuda 60 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m trainer_tune \
    wandb=off "hydra.run.dir=$WORK/runs/ddp_gloo_cuda" model=tiny dist.backend=gloo +sweep=batch \
    'sweep.micro_batch_sizes=[2,8]' 'sweep.grad_accums=[1]' "${ONE_ROUND[@]}"
tune nsa_125m 80 model=nsa_125m train=gpu_bf16 +sweep=batch_gpu 'sweep.micro_batch_sizes=[2,4]' \
    'sweep.grad_accums=[1]' "${ONE_ROUND[@]}"
step pytest_gpu 90 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/gpu

kept=()
for name in runs steps.tsv device.json nccl.json; do
    [[ -e "$WORK/$name" ]] && kept+=("$name")
done
tar -czf "$DEST/runs.tar.gz" -C "$WORK" --exclude='*.png' "${kept[@]}" 2>>"$LOG"
"$PYTHON" "$HERE/gpu_check.py" summary --work "$WORK" --dest "$DEST" --wall-s "$SECONDS"
rc=$?
echo "gpu_check: summary in $DEST/summary.md (exit $rc)" >&2
exit "$rc"
