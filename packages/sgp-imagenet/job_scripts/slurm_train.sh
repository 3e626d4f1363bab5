#!/bin/bash
# ResNet-50 on ImageNet with the settings of Assran et al. 2019 (SGP), for any of the five
# algorithms, on nodes linked by Ethernet or InfiniBand.
#
# Submit from a shell in which `sgp-imagenet` is installed (the job inherits it), here
# from the root of a clone of the repository; any directory works, and checkpoints and
# logs go to the one you submit from:
#
#     DATA=/path/to/imagenet ALGO=osgp NET=infiniband sbatch packages/sgp-imagenet/job_scripts/slurm_train.sh
#     DATA=/path/to/imagenet ALGO=ar sbatch --nodes=8 packages/sgp-imagenet/job_scripts/slurm_train.sh
#     DATA=/path/to/imagenet sbatch --nodes=1 --time=00:20:00 \
#         packages/sgp-imagenet/job_scripts/slurm_train.sh \
#         --epochs 1 --max-iters-per-epoch 50        # a smoke test
#
# Arguments after the script name are appended to `sgp-imagenet train` and override the
# settings below. Parameters, as environment variables:
#   ALGO      ar, sgp, osgp, dpsgd or adpsgd (default sgp): the algorithm, and the 2019
#             recipe's flags for it (the `case "$ALGO"` block below)
#   NET       ethernet or infiniband (default ethernet): NCCL's transport and the
#             interfaces (the `case "$NET"` block below)
#   DATA      ImageFolder root with train/ and val/ (required)
#   CKPT      checkpoint directory, on a file system every node sees; default
#             checkpoints/ALGO-NET-JOBID in the submit directory. A requeued job keeps its
#             job id and its environment, so it finds its checkpoint there; to continue an
#             earlier job in a new one, set CKPT to that job's directory.
#   LOG_DIR   per-rank CSV logs and the summary; default logs/ALGO-NET-JOBID
#   NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME   NET=ethernet: the interface (default eth0)
#   NCCL_IB_HCA   NET=infiniband: the adapters NCCL may use (default: all it finds)
#   FT        0 or 1 (default 0): fault tolerance (ALGO sgp, osgp or dpsgd). The job
#             then survives lost tasks: this script serves the coordinator on the first
#             node (port COORDINATOR_PORT, default 29400), the tasks train with
#             --fault-tolerant over gloo and srun --kill-on-bad-exit=0 keeps the step
#             going when one dies. The log shows the command that starts a replacement,
#             which joins the running job. See the docs' "Surviving failures".
# An unknown ALGO or NET stops the job at once. To check the settings before queueing,
# run the script with bash on the login node: it stops at "submit this script with
# sbatch" when ALGO, NET and DATA are valid.
#
# Time limit and preemption: --signal makes SLURM send SIGUSR1 to every task 180 s
# before the time limit (give or take a minute), and preemption sends SIGTERM.
# sgp-imagenet handles both: the ranks agree on an iteration, write a checkpoint, and
# (--requeue, the default) requeue the job with `scontrol requeue`. The requeued job
# runs this script again and resumes (--resume auto). So this script never requeues
# the job itself, and the signal goes to the tasks, not to this shell (no "B:").
#
#SBATCH --job-name=sgp-imagenet
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

# ---- what to run: checked before anything else ------------------------------------
ALGO=${ALGO:-sgp}
NET=${NET:-ethernet}

# ---- algorithm: the 2019 recipe's flags for each -----------------------------------
# SGP, OSGP and D-PSGD gossip on the paper's graph: the time-varying directed exponential
# graph, one peer per iteration. On many nodes, more peers mix faster at more traffic:
# --peers-per-itr-schedule "0:2", or "0:1 30:2" to switch at epoch 30. One model per node
# (hierarchical gossip, these three only): add --nprocs-per-node 8; the GPUs of a node
# then all-reduce among themselves and the nodes gossip (keep --ntasks-per-node=8 and the
# default block distribution, so a node's ranks are consecutive).
# --checkpoint-all: the ranks' models differ, so every rank saves its own state (about
# 200 MB per rank for ResNet-50, messages in flight included) and a resume continues
# exactly.
directed=(--topology npeer-dynamic-directed-exponential --peers-per-itr-schedule "0:1")
train_flags=(--algorithm "$ALGO")
case "$ALGO" in
    ar)
        # AR-SGD (all-reduce through torch DDP), the synchronous baseline: every rank
        # holds the same model, so the default checkpoint (rank 0 writes the one model)
        # is enough; no gossip flags apply.
        ;;
    sgp)
        # SGP (Algorithm 1): each rank pushes half its model and push-sum weight to one
        # peer per iteration.
        train_flags+=("${directed[@]}" --checkpoint-all)
        ;;
    osgp)
        # OSGP (Algorithm 2): SGP whose messages are received --synch-freq iterations
        # late, so communication overlaps with compute (1: the paper's staleness bound).
        train_flags+=("${directed[@]}" --synch-freq 1 --checkpoint-all)
        ;;
    dpsgd)
        # D-PSGD (Lian et al. 2017): push-pull gossip; the directed exponential graph is
        # regular, so uniform mixing is doubly stochastic.
        train_flags+=("${directed[@]}" --checkpoint-all)
        ;;
    adpsgd)
        # AD-PSGD (Lian et al. 2018): asynchronous pairwise averaging on its default
        # topology, the bipartite exponential graph (so an even number of ranks); no
        # --topology, --synch-freq or hierarchical mode (--nprocs-per-node stays 1).
        train_flags+=(--checkpoint-all)
        ;;
    *)
        echo "ALGO must be one of ar, sgp, osgp, dpsgd, adpsgd; got '$ALGO'" >&2
        exit 2
        ;;
esac

# ---- fault tolerance ----------------------------------------------------------------
FT=${FT:-0}
case "$FT" in
    0)
        kill_on_bad_exit=1  # one task's failure ends the step (and torch's collectives)
        ;;
    1)
        case "$ALGO" in
            sgp | osgp | dpsgd) ;;
            *)
                echo "FT=1 needs ALGO sgp, osgp or dpsgd; got '$ALGO'" >&2
                exit 2
                ;;
        esac
        kill_on_bad_exit=0  # the survivors train on without the lost task
        ;;
    *)
        echo "FT must be one of 0, 1; got '$FT'" >&2
        exit 2
        ;;
esac

# ---- network ------------------------------------------------------------------------
# NCCL's bootstrap and gloo (the gloo backend, and AD-PSGD's responder threads) use TCP
# on either network. `NCCL_DEBUG=INFO` shows which transport NCCL chose.
case "$NET" in
    ethernet)
        # NCCL over TCP sockets. InfiniBand/RoCE is switched off so that NCCL never picks
        # an RDMA port that exists but is not meant for this traffic. Name the interface
        # that links the nodes (`ip -brief address` on a compute node lists them): NCCL
        # and gloo must both use it. NCCL also takes a prefix ("eth", "enp") or an
        # exclusion list ("^lo,docker"); gloo wants exact names.
        export NCCL_IB_DISABLE=1
        export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-eth0}
        export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-eth0}
        # More sockets and threads per peer help NCCL fill a fast (25-100 Gbit/s) link:
        # export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4
        ;;
    infiniband)
        # NCCL's IB verbs transport (with GPUDirect RDMA where the system supports it).
        # NCCL finds the HCAs itself; NCCL_IB_HCA restricts it to some of them (`ibstat`
        # lists them), for example only the ports next to the GPUs:
        #   export NCCL_IB_HCA=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1
        # ("mlx5" matches every mlx5 device, "=mlx5_0" exactly one, "^mlx5_4" all but
        # one). On RoCE (RDMA over Ethernet) also set the GID index, typically
        # NCCL_IB_GID_INDEX=3. The TCP traffic goes over the interface of the host name;
        # to put it on IPoIB: export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0
        export NCCL_IB_DISABLE=0
        ;;
    *)
        echo "NET must be one of ethernet, infiniband; got '$NET'" >&2
        exit 2
        ;;
esac
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# ---- paths --------------------------------------------------------------------------
DATA=${DATA:?set DATA to the ImageNet root (an ImageFolder with train/ and val/)}
RUN=$ALGO-$NET-${SLURM_JOB_ID:?submit this script with sbatch}
BASE=${SLURM_SUBMIT_DIR:-$PWD}
CKPT=${CKPT:-$BASE/checkpoints/$RUN}
LOG_DIR=${LOG_DIR:-$BASE/logs/$RUN}

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
    "$ALGO on $NET, ${SLURM_JOB_NUM_NODES:-?} nodes," \
    "${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?}"
echo "data $DATA, checkpoints $CKPT, logs $LOG_DIR"

# ---- training -----------------------------------------------------------------------
# Each task reads its rank from SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID and meets
# the others on the first node of the job (port 10000 + job id % 50000; export
# MASTER_PORT to choose another). The paper's ResNet-50 settings: 32 images per GPU,
# lr 0.1 per 256 images, 90 epochs with 5 of warm-up and steps of x0.1 at 30, 60 and 80,
# Nesterov momentum 0.9, weight decay 1e-4 (not on BN or bias); bf16 autocast and
# channels-last for speed. --checkpoint-every 1000 iterations guards against crashes
# that send no signal.
#
# Scaling: change --nodes (sbatch --nodes=N); --batch-size stays 32 per GPU (the 2019
# recipe, and the app's default) and --lr is per 256 images: the app scales it by the
# global batch / 256 (4 nodes x 8 GPUs x 32 = 1024 images, lr 0.4), with --warmup-epochs
# of gradual warm-up. Rank 0 prints the global batch and the scaled rate at start-up, and
# warns above 8192 images per step (32 nodes of 8 GPUs at 32 per GPU). For more GPUs per
# node change --ntasks-per-node and --gres together.
recipe=(
    --arch resnet50 --batch-size 32 --lr 0.1 --momentum 0.9 --nesterov --weight-decay 1e-4
    --epochs 90 --lr-schedule "30:0.1 60:0.1 80:0.1" --warmup-epochs 5
    --amp bf16 --channels-last --workers 8
)
train=(
    sgp-imagenet train "${train_flags[@]}" "${recipe[@]}"
    --data "$DATA" --checkpoint-dir "$CKPT" --checkpoint-every 1000 --resume auto
    --requeue --log-dir "$LOG_DIR" --print-freq 100 --progress lines
)
if [[ $FT == 1 ]]; then
    # The coordinator runs here, in the batch shell on the first node, and goes with the
    # job; a requeued job starts a new one and resumes from the members' checkpoints.
    port=${COORDINATOR_PORT:-29400}
    host=${SLURMD_NODENAME:-$(hostname)}
    sgp-imagenet coordinator --port "$port" >> "$LOG_DIR/coordinator.log" 2>&1 &
    coordinator=$!
    trap 'kill "$coordinator" 2>/dev/null || true' EXIT
    train+=(--fault-tolerant --coordinator "$host:$port" --world-size "${SLURM_NTASKS:-1}")
    echo "fault tolerant: coordinator on $host:$port; to replace a lost task, run"
    printf '  srun --jobid=%s --nodes=1 --ntasks=1 --overlap' "$SLURM_JOB_ID"
    printf ' %q' "${train[@]}" "$@"
    printf '\n'
fi
srun --kill-on-bad-exit="$kill_on_bad_exit" "${train[@]}" "$@"
