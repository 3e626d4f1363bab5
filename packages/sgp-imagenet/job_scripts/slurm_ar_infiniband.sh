#!/bin/bash
# AR-SGD (all-reduce SGD through torch DDP), the synchronous baseline:
# ResNet-50 on ImageNet, nodes linked by InfiniBand (NCCL over IB verbs / RDMA).
#
# Submit from a shell in which `sgp-imagenet` is installed (the job inherits it):
#
#     DATA=/path/to/imagenet sbatch slurm_ar_infiniband.sh
#     DATA=/path/to/imagenet sbatch --nodes=8 slurm_ar_infiniband.sh
#     DATA=/path/to/imagenet sbatch --nodes=1 --time=00:20:00 slurm_ar_infiniband.sh \
#         --epochs 1 --max-iters-per-epoch 50        # a smoke test
#
# Arguments after the script name are appended to `sgp-imagenet train` and override the
# settings below. Parameters, as environment variables:
#   DATA      ImageFolder root with train/ and val/ (required)
#   CKPT      checkpoint directory, on a file system every node sees; default
#             checkpoints/JOBNAME-JOBID in the submit directory. A requeued job keeps its
#             job id, so it finds its checkpoint there; to continue an earlier job in a
#             new one, set CKPT to that job's directory.
#   LOG_DIR   per-rank CSV logs and the summary; default logs/JOBNAME-JOBID
#   NCCL_IB_HCA   the InfiniBand adapters NCCL may use (default: all it finds)
#
# Time limit and preemption: --signal makes SLURM send SIGUSR1 to every task 180 s
# before the time limit (give or take a minute), and preemption sends SIGTERM.
# sgp-imagenet handles both: the ranks agree on an iteration, write a checkpoint, and
# (--requeue, the default) requeue the job with `scontrol requeue`. The requeued job
# runs this script again and resumes (--resume auto). So this script never requeues
# the job itself, and the signal goes to the tasks, not to this shell (no "B:").
#
#SBATCH --job-name=ar-infiniband
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=10
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# Above: 4 nodes x 8 GPUs, one task per GPU (--gres must match --ntasks-per-node);
# 10 CPUs per task for 8 data-loading workers; --open-mode=append keeps the log of the
# runs before a requeue. Add --partition, --account, --exclusive as your site requires.

set -euo pipefail

# ---- paths ------------------------------------------------------------------------
DATA=${DATA:?set DATA to the ImageNet root (an ImageFolder with train/ and val/)}
RUN=${SLURM_JOB_NAME:-ar-infiniband}-${SLURM_JOB_ID:?submit this script with sbatch}
BASE=${SLURM_SUBMIT_DIR:-$PWD}
CKPT=${CKPT:-$BASE/checkpoints/$RUN}
LOG_DIR=${LOG_DIR:-$BASE/logs/$RUN}

# ---- network: InfiniBand ---------------------------------------------------------
# NCCL's IB verbs transport (with GPUDirect RDMA where the system supports it). NCCL
# finds the HCAs itself; NCCL_IB_HCA restricts it to some of them (`ibstat` lists them),
# for example only the ports next to the GPUs:
#   export NCCL_IB_HCA=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1
# ("mlx5" alone matches every mlx5 device, "=mlx5_0" exactly one, "^mlx5_4" all but one).
# On RoCE (RDMA over Ethernet) also set the GID index, typically NCCL_IB_GID_INDEX=3.
export NCCL_IB_DISABLE=0
# NCCL's bootstrap and gloo (the gloo backend, and AD-PSGD's responder threads) still
# use TCP; by default over the interface of the host name. To put them on IPoIB:
# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# ---- processes ----------------------------------------------------------------------
# One OpenMP thread per rank, as torchrun does; data loading has its own workers.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Slurm 22.05 and later do not pass --cpus-per-task from sbatch to srun by themselves.
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi

if ! command -v sgp-imagenet >/dev/null; then
    echo "sgp-imagenet is not on PATH: activate its environment before sbatch" >&2
    exit 1
fi
mkdir -p "$CKPT" "$LOG_DIR"
echo "$(date -Is) job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}):" \
    "${SLURM_JOB_NUM_NODES:-?} nodes, ${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?}"
echo "data $DATA, checkpoints $CKPT, logs $LOG_DIR"

# ---- training -----------------------------------------------------------------------
# Each task reads its rank from SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID and meets
# the others on the first node of the job (port 10000 + job id % 50000; export
# MASTER_PORT to choose another). The paper's ResNet-50 settings: 32 images per GPU,
# lr 0.1 per 256 images (scaled by the app), 90 epochs with 5 of warm-up and steps of
# x0.1 at 30, 60 and 80, Nesterov momentum 0.9, weight decay 1e-4 (not on BN or bias);
# bf16 autocast and channels-last for speed. --checkpoint-every 1000 iterations guards
# against crashes that send no signal.
#
# AR-SGD: every rank holds the same model, so the default checkpoint (rank 0 writes the
# one model) is enough; no gossip flags apply.
#
# Scaling: change --nodes (sbatch --nodes=N); --batch-size stays 32 per GPU and --lr is
# per 256 images: the app scales it by the global batch / 256 (4 nodes x 8 GPUs x 32 =
# 1024 images, lr 0.4), with --warmup-epochs of gradual warm-up. For more GPUs per node
# change --ntasks-per-node and --gres together.
srun --kill-on-bad-exit=1 \
    sgp-imagenet train \
    --algorithm ar \
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
    --checkpoint-every 1000 \
    --resume auto \
    --requeue \
    --log-dir "$LOG_DIR" \
    --print-freq 100 \
    --progress lines \
    "$@"
