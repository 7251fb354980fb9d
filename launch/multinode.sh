#!/usr/bin/env bash
# Several nodes: run this on every node with the same NNODES, MASTER_ADDR and MASTER_PORT, and each node's
# own NODE_RANK. torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT forms one group over all nodes.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node01 launch/multinode.sh +sweep=batch_gpu   # on node01
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node01 launch/multinode.sh +sweep=batch_gpu   # on node02
#
# NNODES, NODE_RANK, MASTER_ADDR: required. MASTER_PORT: default 29500. NPROC_PER_NODE: default one per
# visible GPU, else 1. MAX_RESTARTS: default 3 (after a stalled or crashed trial the group restarts and the
# sweep resumes from its journal). RDZV_ID: the rendezvous id, the same on every node (default trainer_tune).
# PYTHON: default python3. Every argument goes to Hydra. The output directory is chosen once for all nodes;
# give hydra.run.dir=DIR on a filesystem every node sees if logs from all nodes should land in one place.
set -euo pipefail

missing=()
for name in NNODES NODE_RANK MASTER_ADDR; do
    if [[ -z "${!name:-}" ]]; then
        missing+=("$name")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "launch/multinode.sh: set ${missing[*]} (see the comment at the top of this script)" >&2
    exit 2
fi

python="${PYTHON:-python3}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    if [[ "$gpus" =~ ^[0-9]+$ && "$gpus" -gt 0 ]]; then
        NPROC_PER_NODE="$gpus"
    else
        NPROC_PER_NODE=1
    fi
fi

cmd=("$python" -m torch.distributed.run
     --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE"
     --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="${RDZV_ID:-trainer_tune}"
     --max-restarts="${MAX_RESTARTS:-3}" -m trainer_tune "$@")
echo "launch/multinode.sh: ${cmd[*]}" >&2
exec "${cmd[@]}"
