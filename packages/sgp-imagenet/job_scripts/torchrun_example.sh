#!/bin/bash
# Multi-node training with torchrun, without SLURM: run this same script on every node,
# here from the root of a clone of the repository (any directory works; checkpoints and
# logs go to the one it runs in).
#
# Static rendezvous: each node is told its index and the address of node 0.
#
#     node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 DATA=/path/to/imagenet \
#                  packages/sgp-imagenet/job_scripts/torchrun_example.sh
#     node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 DATA=/path/to/imagenet \
#                  packages/sgp-imagenet/job_scripts/torchrun_example.sh
#
# Dynamic (c10d) rendezvous: no node index; torchrun numbers the nodes as they join.
#
#     every node:  NNODES=2 RDZV_ENDPOINT=node0:29400 DATA=/path/to/imagenet \
#                  packages/sgp-imagenet/job_scripts/torchrun_example.sh
#
# Arguments after the script name are appended to `sgp-imagenet train` and override the
# settings below, for example `torchrun_example.sh --synch-freq 1` with ALGO=osgp,
# or `--epochs 1 --max-iters-per-epoch 50` for a smoke test. Parameters, as environment
# variables:
#   DATA            ImageFolder root with train/ and val/ (required), the same path on
#                   every node
#   ALGO            ar, sgp, osgp, dpsgd or adpsgd (default sgp), as for slurm_train.sh
#                   (ALGORITHM, its earlier name, is read too); gossip algorithms use
#                   their default topology (the one-peer directed exponential graph; the
#                   bipartite exponential graph for adpsgd)
#   NNODES          number of nodes (default 2)
#   GPUS_PER_NODE   processes per node, one per GPU (default 8)
#   NODE_RANK, MASTER_ADDR, MASTER_PORT   static rendezvous (port default 29500)
#   RDZV_ENDPOINT   host:port of a c10d rendezvous; when set, replaces the three above
#   RUN_ID          names the run and the rendezvous (default sgp-imagenet-ALGO)
#   CKPT            checkpoint directory, on a file system every node sees (default
#                   ./checkpoints/RUN_ID): rank 0 may write the checkpoint that every
#                   rank reads when it resumes
#   LOG_DIR         per-rank CSV logs and the summary (default ./logs/RUN_ID)
#
# Network: on Ethernet, name the interface that links the nodes and switch InfiniBand off,
#     export NCCL_SOCKET_IFNAME=eth0 GLOO_SOCKET_IFNAME=eth0 NCCL_IB_DISABLE=1
# and on InfiniBand optionally restrict NCCL to some adapters, e.g. NCCL_IB_HCA=mlx5_0:1.
#
# Stopping: torchrun passes a SIGTERM it receives on to its workers (and kills them after
# a grace period, 30 s by default); sgp-imagenet then writes a checkpoint on every rank
# and exits. Run the script again with the same CKPT to resume (--resume auto). torchrun
# forwards SIGUSR1 only if TORCHELASTIC_SIGNALS_TO_HANDLE lists it (recent PyTorch).
# Outside SLURM there is nothing to requeue, hence --no-requeue (it matters when this
# runs inside a SLURM allocation, whose job the application would otherwise requeue).

set -euo pipefail

DATA=${DATA:?set DATA to the ImageNet root (an ImageFolder with train/ and val/)}
ALGO=${ALGO:-${ALGORITHM:-sgp}}
NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RUN_ID=${RUN_ID:-sgp-imagenet-$ALGO}
CKPT=${CKPT:-$PWD/checkpoints/$RUN_ID}
LOG_DIR=${LOG_DIR:-$PWD/logs/$RUN_ID}

if [[ -n ${RDZV_ENDPOINT:-} ]]; then
    rendezvous=(--rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$RUN_ID")
else
    NODE_RANK=${NODE_RANK:?set NODE_RANK (0 .. NNODES-1), or RDZV_ENDPOINT}
    MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the host name of node 0, or RDZV_ENDPOINT}
    MASTER_PORT=${MASTER_PORT:-29500}
    rendezvous=(--node-rank="$NODE_RANK" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT")
fi

if ! command -v sgp-imagenet >/dev/null; then
    echo "sgp-imagenet is not on PATH: activate its environment first" >&2
    exit 1
fi
mkdir -p "$CKPT" "$LOG_DIR"

# The paper's ResNet-50 settings: 32 images per GPU, lr 0.1 per 256 images (the app
# scales it by the global batch / 256), 90 epochs with 5 of warm-up and steps of x0.1 at
# 30, 60 and 80, Nesterov momentum 0.9, weight decay 1e-4; bf16 autocast, channels-last.
# --checkpoint-all: every rank saves its own model, so gossip resumes exactly (for
# ALGO=ar, where all ranks agree, it may be dropped to save disk).
# Scaling: NNODES and GPUS_PER_NODE; keep --batch-size (per GPU) and --lr (per 256
# images): the app scales the lr to the global batch and prints both at start-up.
# More peers per iteration: --peers-per-itr-schedule "0:2". One model per node
# (hierarchical gossip, not for adpsgd): --nprocs-per-node "$GPUS_PER_NODE".
torchrun \
    --nnodes="$NNODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    "${rendezvous[@]}" \
    --no-python \
    sgp-imagenet train \
    --algorithm "$ALGO" \
    --arch resnet50 \
    --batch-size 32 \
    --lr 0.1 \
    --momentum 0.9 \
    --nesterov \
    --weight-decay 1e-4 \
    --epochs 90 \
    --lr-schedule "30:0.1 60:0.1 80:0.1" \
    --warmup-epochs 5 \
    --amp bf16 \
    --channels-last \
    --data "$DATA" \
    --workers 8 \
    --checkpoint-dir "$CKPT" \
    --checkpoint-all \
    --checkpoint-every 1000 \
    --resume auto \
    --no-requeue \
    --log-dir "$LOG_DIR" \
    --print-freq 100 \
    --progress lines \
    "$@"
