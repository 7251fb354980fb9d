#!/usr/bin/env bash
# One node, N processes: a trainer_tune sweep under torchrun on this machine.
#
#   launch/local.sh [HYDRA ARGS...]            e.g. launch/local.sh +sweep=batch window=long
#   NPROC=4 launch/local.sh +sweep=batch_gpu model=gpt_125m train=gpu_bf16
#
# NPROC: processes (ranks); default: one per visible GPU, else 2. MAX_RESTARTS: torchrun restarts after a
# stalled or crashed trial (default 3; the journal lets the sweep resume where it stopped).
# PYTHON: the interpreter with trainer_tune installed (default: python3). Every argument goes to Hydra.
set -euo pipefail

python="${PYTHON:-python3}"
if [[ -z "${NPROC:-}" ]]; then
    gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    if [[ "$gpus" =~ ^[0-9]+$ && "$gpus" -gt 0 ]]; then
        NPROC="$gpus"
    else
        NPROC=2
    fi
fi

cmd=("$python" -m torch.distributed.run --standalone --nproc_per_node="$NPROC"
     --max-restarts="${MAX_RESTARTS:-3}" -m trainer_tune "$@")
echo "launch/local.sh: ${cmd[*]}" >&2
exec "${cmd[@]}"
