"""``GossipStrategy``: Lightning's DDP strategy with a gossip wrapper instead of DDP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.distributed.constants import default_pg_timeout
from torch.optim import Optimizer

from gossip_nn._base import DataParallelModule
from gossip_nn.factory import gossip_options, make_data_parallel
from gossip_nn.lightning._averaging import average_module, broadcast_from_rank0
from gossip_nn.lightning._checkpoints import check_compatible, own_part, rank_checkpoint_path
from gossip_nn.lightning._membership import (
    Follower,
    broadcast_from_every_member,
    leave_alone_on_sigterm,
    membership_environment,
    membership_metrics,
)
from gossip_nn.lightning._metrics import PREFIX, consensus_distance, log_to_loggers, step_metrics

__all__ = ["EVAL_MODELS", "GossipStrategy"]

T = TypeVar("T")

EVAL_MODELS: tuple[str, ...] = ("average", "local")
"""What validation and test evaluate: the network-average model or each rank's own."""


class GossipStrategy(DDPStrategy):
    """Train a `LightningModule` with AR-SGD, SGP, OSGP, D-PSGD or AD-PSGD.

    One process per device, launched as by Lightning's ``"ddp"`` strategy. When fitting,
    the optimizers are set up first and the module is then wrapped by
    [`make_data_parallel`][gossip_nn.make_data_parallel] (for ``"ar"`` the wrapper is
    `DistributedDataParallel` itself), whose optimizer step hooks run the gossip.
    Training starts from global rank 0's model, which is broadcast as DDP does.

    Lightning runs ``training_step`` and ``backward`` in a closure that
    ``optimizer.step(closure)`` would call after the step's pre-hooks, where the
    parameters no longer hold the de-biased model. This strategy runs the closure
    first and only then steps the optimizer, so that forward and backward see the
    same model as in the plain loop: training with it gives the same parameters as
    the plain gossip-nn loop. With a gradient scaler (``precision="16-mixed"`` on a
    GPU, or ``plugins=[MixedPrecision("16-mixed", "cpu")]``) the step goes through the
    wrapper's
    [`scaler_step`][gossip_nn.DataParallelModule.scaler_step], so a rank that skips an
    update still gossips. With ``accumulate_grad_batches`` gossip runs once per
    optimizer step, and the micro-batches but the last run in the wrapper's
    [`no_sync`][gossip_nn.DataParallelModule.no_sync].

    Validation, test and prediction use, by default, the exact network average of the models
    on every rank ([`average_for_eval`][gossip_nn.DataParallelModule.average_for_eval]);
    each rank gets its own parameters back afterwards. ``trainer.validate`` or
    ``trainer.test`` after ``trainer.fit`` average with the push-sum weights the fit
    ended with. The end of a fit [`close`][gossip_nn.DataParallelModule.close]s the
    wrapper, after which every rank keeps its own (de-biased) model.

    Checkpoints (``ModelCheckpoint``, ``trainer.save_checkpoint``) hold every rank's
    own state, since gossip leaves the ranks with different models: global rank 0
    writes the file Lightning names, with its model, optimizer and gossip state
    (push-sum weight, step counters, OSGP's rounds in flight) under the key
    ``"gossip"``, and every other rank ``r`` writes the same for itself to
    ``<file>.rank<r>`` ([`rank_checkpoint_path`][gossip_nn.lightning.rank_checkpoint_path]).
    ``trainer.fit(..., ckpt_path=...)`` then continues exactly where the run was, on
    the same number of processes; ``LightningModule.load_from_checkpoint(file)``
    loads rank 0's model. A checkpoint without gossip state (from ``DDPStrategy``,
    say) starts every rank from its model. Removing a checkpoint (``save_top_k``)
    removes its parts too.

    What gossip does reaches the trainer's loggers (``log_gossip=True``), from global
    rank 0, every ``log_every_n_steps`` optimizer steps: ``gossip/bytes_sent`` (the
    bytes rank 0 has sent so far) and, for SGP and OSGP, ``gossip/ps_weight`` (its
    push-sum weight); and at each validation, test or prediction on the average model
    ``gossip/consensus_distance``, the root-mean-square distance of the ranks'
    parameters from their average (one extra all-reduce of a scalar).

    With ``fault_tolerance=`` a started [`FaultTolerance`][gossip_nn.FaultTolerance]
    (SGP, OSGP, D-PSGD, AD-PSGD), training survives lost ranks: the survivors move to
    the next generation inside the optimizer step and the fit goes on; Lightning's
    ranks and world size follow the generation (a
    [`MembershipEnvironment`][gossip_nn.lightning.MembershipEnvironment]), rank 0 of
    the new generation takes over logging and the checkpoint's named file, and a
    Lightning collective (a checkpoint's broadcast, ``log(sync_dist=True)``, an
    evaluation's average) that a lost member breaks is run again with the survivors.
    Launch every process on its own (plain processes, ``srun --kill-on-bad-exit=0``),
    not with Lightning's launcher or ``torchrun``, which end every process when one
    fails; ``Trainer(devices=1)`` (or ``devices=[LOCAL_RANK]`` on GPUs). Each change is
    logged as ``gossip/generation``, ``gossip/members`` and ``gossip/lost`` (and with
    every step's counters), and one line per survivor on the ``gossip_nn.lightning``
    logger. A survivor keeps its own share of the data: the lost rank's share is
    skipped for the rest of the fit. Joining a running job is not supported here.

    Supported in this version: automatic or manual optimization with exactly one
    optimizer.

    Args:
        algorithm: One of [`ALGORITHMS`][gossip_nn.ALGORITHMS]: ``"ar"``, ``"sgp"``,
            ``"osgp"``, ``"dpsgd"`` or ``"adpsgd"``.
        eval_model: ``"average"`` (validate, test and predict with the network-average
            model) or ``"local"`` (each rank its own model).
        log_gossip: Send what gossip does to the trainer's loggers (see above).
        ddp_options: ``"ar"`` only: keywords for `DistributedDataParallel`, as for
            [`make_data_parallel`][gossip_nn.make_data_parallel].
        accelerator: Lightning's accelerator (normally set by the `Trainer`).
        parallel_devices: Lightning's devices (normally set by the `Trainer`).
        cluster_environment: Lightning's cluster environment.
        checkpoint_io: Lightning's checkpoint plugin.
        precision_plugin: Lightning's precision plugin.
        process_group_backend: ``"gloo"`` or ``"nccl"``; by default the device's.
        process_group_timeout: Timeout of the default process group (``timeout`` is
            the gossip option).
        start_method: How Lightning starts the processes, as for ``DDPStrategy``.
        **options: Fields of [`GossipOptions`][gossip_nn.GossipOptions], such as
            ``topology="ring"``; ``fault_tolerance`` must be started.

    Raises:
        ValueError: For an unknown algorithm or ``eval_model``, an invalid option,
            ``fault_tolerance`` not started yet or started to join, ``ddp_options``
            with an algorithm other than ``"ar"``, a ``cluster_environment`` with
            ``fault_tolerance``, or (at ``fit``) a `LightningModule` with more than one
            optimizer.
        TypeError: For an unknown option name or a value of the wrong type
            (``log_gossip`` not a bool).

    Example:
        ```python
        trainer = Trainer(
            strategy=GossipStrategy("sgp", topology="ring"),
            accelerator="cpu",
            devices=2,
            max_epochs=3,
        )
        trainer.fit(model, train_loader, val_loader)  # validation: the average model
        ```
    """

    def __init__(
        self,
        algorithm: str = "sgp",
        *,
        eval_model: str = "average",
        log_gossip: bool = True,
        ddp_options: Mapping[str, Any] | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        process_group_backend: str | None = None,
        process_group_timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **options: Any,
    ) -> None:
        gossip_options(algorithm, **options)  # raises now for a bad name or value
        ft = options.get("fault_tolerance")
        if ft is not None:
            cluster_environment = membership_environment(ft, cluster_environment)
        if not isinstance(log_gossip, bool):
            raise TypeError(f"log_gossip must be a bool; got {log_gossip!r}")
        if eval_model not in EVAL_MODELS:
            raise ValueError(
                f"eval_model must be one of {', '.join(EVAL_MODELS)}; got {eval_model!r}"
            )
        if ddp_options is not None and algorithm.lower() != "ar":
            raise ValueError(
                f"ddp_options applies only to algorithm 'ar'; {algorithm!r} runs no "
                "DistributedDataParallel: leave ddp_options unset"
            )
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=process_group_timeout,
            start_method=start_method,
        )
        self._algorithm = algorithm.lower()
        self._eval_model = eval_model
        self._log_gossip = log_gossip
        self._ddp_options = ddp_options
        self._gossip_options = dict(options)
        self._wrapper: DataParallelModule | None = None
        self._ps_weight = 1.0  # the push-sum weight the last fit (or checkpoint) ended with
        self._gossip_state: dict[str, Any] | None = None  # of the state dict just taken
        self._restored: dict[str, Any] | None = None  # the loaded checkpoint's "gossip"
        self._failed = False
        self._eval = ExitStack()
        self._follower = None if ft is None else Follower(ft)

    @property
    def algorithm(self) -> str:
        """The training algorithm, in lower case."""
        return self._algorithm

    @property
    def eval_model(self) -> str:
        """``"average"`` or ``"local"``: what validation and test evaluate."""
        return self._eval_model

    @property
    def wrapper(self) -> DataParallelModule | None:
        """The [`DataParallelModule`][gossip_nn.DataParallelModule] while fitting, else
        ``None`` (for ``bytes_sent``, ``ps_weight``, ``set_topology``)."""
        return self._wrapper

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register no names: pass an instance as ``Trainer(strategy=...)``."""

    def setup_distributed(self) -> None:
        """Form the default process group; with fault tolerance it is already the first
        generation's (``FaultTolerance.start``)."""
        if self._follower is None:
            super().setup_distributed()
            return
        reset_seed()
        self._process_group_backend = self._follower.ft.backend
        self._follower.changes(self.global_rank)
        self.set_world_ranks()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Shard the data over the processes (with fault tolerance: over the members of
        the generation the dataloader is made in)."""
        if self._follower is None:
            return super().distributed_sampler_kwargs
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's barrier (with fault tolerance: again with the survivors if a
        member is lost)."""
        self._collective(lambda: super(GossipStrategy, self).barrier(*args, **kwargs))

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Lightning's broadcast (with fault tolerance: an all-gather, again with the
        survivors if a member is lost)."""
        if self._follower is None or not dist.is_initialized():
            return super().broadcast(obj, src)
        return self._collective(lambda: broadcast_from_every_member(obj, src))

    def on_train_start(self) -> None:
        """With fault tolerance, a SIGTERM ends only the process that receives it."""
        super().on_train_start()
        if self._follower is not None:
            leave_alone_on_sigterm(self._trainer())

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any | None = "mean") -> Any:
        """Lightning's reduction (with fault tolerance: again with the survivors if a
        member is lost)."""
        if not isinstance(tensor, Tensor):
            return tensor
        if self._follower is None:
            return super().reduce(tensor, group, reduce_op)
        # reduced in place: a failed attempt may leave it half reduced, so keep the input
        original, attempts = tensor.detach().clone(), 0

        def reduce() -> Any:
            nonlocal attempts
            if attempts:
                with torch.no_grad():
                    tensor.copy_(original)
            attempts += 1
            return super(GossipStrategy, self).reduce(tensor, group, reduce_op)

        return self._collective(reduce)

    def all_gather(
        self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False
    ) -> Tensor:
        """Lightning's all-gather (with fault tolerance: again with the survivors if a
        member is lost)."""
        return self._collective(
            lambda: super(GossipStrategy, self).all_gather(tensor, group, sync_grads)
        )

    def _collective(self, collective: Callable[[], T]) -> T:
        """Run one of Lightning's collectives, surviving a lost member if fault tolerant."""
        if self._follower is None:
            return collective()
        out = self._follower.survive(self._wrapper, collective)
        self._follow()
        return out

    def _follow(self) -> None:
        """After a generation change: Lightning's ranks follow, and rank 0 logs it."""
        assert self._follower is not None
        if not self._follower.changes(self.global_rank):
            return
        trainer = self._trainer()
        if self._log_gossip and trainer is not None and trainer.loggers and self.global_rank == 0:
            metrics = membership_metrics(self._follower.ft)
            log_to_loggers(trainer.loggers, metrics, trainer.global_step)

    def setup(self, trainer: pl.Trainer) -> None:
        """Move the model to its device; when fitting, set up the optimizer and wrap.

        Unlike ``DDPStrategy``, a ``validate``/``test`` outside a fit does not broadcast
        rank 0's model: every rank keeps its own, to evaluate it or the average.
        """
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self._layer_sync:
            self.model = self._layer_sync.apply(self.model)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if fitting:
            self.setup_optimizers(trainer)
            self._wrap()
        self.setup_precision_plugin()
        if fitting:
            _optimizers_to_device(self.optimizers, self.root_device)

    def _wrap(self) -> None:
        """Wrap the LightningModule with the one optimizer it configured."""
        if len(self.optimizers) != 1:
            raise ValueError(
                "GossipStrategy supports exactly one optimizer, whose step hooks run the "
                f"gossip; configure_optimizers returned {len(self.optimizers)}"
            )
        module = self.lightning_module
        assert module is not None
        restored, self._restored = self._restored, None
        own: dict[str, Any] = {}
        if restored is not None:
            # Lightning restored this rank's parameters before setup; the wrapper starts
            # from one model on every rank and then loads them, with the gossip state
            own = {f"module.{k}": v.clone() for k, v in module.state_dict().items()}
        broadcast_from_rank0(module)
        self._failed = False
        self._wrapper = make_data_parallel(
            self._algorithm,
            module,
            self.optimizers[0],
            ddp_options=self._ddp_options,
            **self._gossip_options,
        )
        self.model = self._wrapper
        if restored is not None:
            self._wrapper.load_state_dict({**own, "_extra_state": restored["state"]})

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """This rank's model, taken with the wrapper's gossip state (kept for the file)."""
        if self._wrapper is None:
            self._gossip_state = None
            return super().lightning_module_state_dict()
        state = self._wrapper.state_dict()
        self._gossip_state = state.pop("_extra_state")
        return {k.removeprefix("module."): v for k, v in state.items()}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Rank 0 writes ``filepath``, every other rank ``r`` its own ``<filepath>.rank<r>``.

        Each holds the rank's model, optimizer and gossip state (``checkpoint["gossip"]``),
        with the trainer's state that every rank shares.
        """
        if self._gossip_state is not None and "gossip" not in checkpoint:
            checkpoint["gossip"] = {
                "algorithm": self._algorithm,
                "world_size": self.world_size,
                "rank": self.global_rank,
                "state": self._gossip_state,
            }
        if "gossip" in checkpoint and self.global_rank != 0:
            path = rank_checkpoint_path(filepath, self.global_rank)
            self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Load this rank's part of a checkpoint written by ``save_checkpoint``.

        Raises:
            ValueError: If the checkpoint was written by another number of processes
                or another algorithm, or its parts are from different steps (on every
                rank, naming the ranks).
            FileNotFoundError: If a rank's part is missing (on every rank, naming it).
        """
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        gossip = checkpoint.get("gossip")
        self._restored = None
        if gossip is None:  # no gossip state (DDPStrategy's, say): start from rank 0's model
            return checkpoint
        check_compatible(gossip, checkpoint_path, self.world_size, self._algorithm)
        checkpoint = own_part(
            self.checkpoint_io, checkpoint_path, checkpoint, self.global_rank, weights_only
        )
        gossip = checkpoint["gossip"]
        self._restored = gossip
        self._ps_weight = float(gossip["state"]["ps_weight"])
        return checkpoint

    def remove_checkpoint(self, filepath: Any) -> None:
        """Remove ``filepath`` (rank 0) and every rank's own part of it."""
        if self.global_rank != 0:
            self.checkpoint_io.remove_checkpoint(rank_checkpoint_path(filepath, self.global_rank))
        super().remove_checkpoint(filepath)

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``closure`` (training step and backward), then the optimizer step.

        The precision plugin then steps with a closure that returns the result already
        computed, so the step hooks (and the gossip in them) come after the backward
        pass, as in the plain training loop.
        """
        wrapper = self._wrapper
        if wrapper is None:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        result = closure()

        def computed() -> Any:
            return result

        plugin = self.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        if scaler is None:
            output = super().optimizer_step(optimizer, computed, model, **kwargs)
        else:
            plugin.scaler = _ScalerThroughWrapper(scaler, wrapper)  # type: ignore[attr-defined]
            try:
                output = super().optimizer_step(optimizer, computed, model, **kwargs)
            finally:
                plugin.scaler = scaler  # type: ignore[attr-defined]
        if self._follower is not None:
            self._follow()
        self._log_step(wrapper)
        return output

    def _log_step(self, wrapper: DataParallelModule) -> None:
        """Rank 0's gossip counters to the loggers, every ``log_every_n_steps`` steps."""
        trainer = self._trainer()
        if not self._log_gossip or trainer is None or not trainer.loggers or self.global_rank:
            return
        step = trainer.global_step  # this step's index: Lightning counts it once it returns
        every = int(getattr(trainer, "log_every_n_steps", 50))  # set by Trainer(...)
        if (step + 1) % every == 0:
            metrics = step_metrics(wrapper)
            if self._follower is not None:
                metrics.update(membership_metrics(self._follower.ft))
            log_to_loggers(trainer.loggers, metrics, step)

    def _trainer(self) -> pl.Trainer | None:
        module = self.lightning_module
        return None if module is None else module._trainer

    @contextmanager
    def block_backward_sync(self) -> Iterator[None]:
        """The wrapper's ``no_sync()``: Lightning enters it for accumulated micro-batches."""
        if self._wrapper is None:
            with super().block_backward_sync():
                yield
            return
        with self._wrapper.no_sync():
            yield

    def on_validation_start(self) -> None:
        """Hold the evaluated model (see ``eval_model``) until validation ends."""
        super().on_validation_start()
        self._enter_eval()

    def on_validation_end(self) -> None:
        """Give every rank its own parameters back."""
        self._eval.close()
        super().on_validation_end()

    def on_test_start(self) -> None:
        """Hold the evaluated model (see ``eval_model``) until the test ends."""
        super().on_test_start()
        self._enter_eval()

    def on_test_end(self) -> None:
        """Give every rank its own parameters back."""
        self._eval.close()
        super().on_test_end()

    def on_predict_start(self) -> None:
        """Hold the evaluated model (see ``eval_model``) until prediction ends."""
        super().on_predict_start()
        self._enter_eval()

    def on_predict_end(self) -> None:
        """Give every rank its own parameters back."""
        self._eval.close()
        super().on_predict_end()

    def _enter_eval(self) -> None:
        """Replace the parameters by the network average; log the consensus distance."""
        if self._eval_model == "local" or not (dist.is_available() and dist.is_initialized()):
            return
        module = self.lightning_module
        assert module is not None
        trainer = self._trainer()
        # every rank has the same loggers, so every rank enters the collective or none does
        logging = self._log_gossip and trainer is not None and bool(trainer.loggers)
        own = [p.detach().clone() for p in module.parameters()] if logging else []
        wrapper = self._wrapper
        if wrapper is not None:
            self._collective(lambda: self._eval.enter_context(wrapper.average_for_eval()))
        else:
            self._eval.enter_context(average_module(module, self._ps_weight))
        if logging and trainer is not None:
            average = [p.detach() for p in module.parameters()]
            distance = self._collective(lambda: consensus_distance(own, average))
            if self.global_rank == 0:
                metrics = {f"{PREFIX}consensus_distance": distance}
                log_to_loggers(trainer.loggers, metrics, trainer.global_step)

    def on_exception(self, exception: BaseException) -> None:
        """Remember the failure: teardown then abandons the wrapper instead of closing it."""
        self._failed = True
        super().on_exception(exception)

    def teardown(self) -> None:
        """Close the wrapper (every rank; abandon it after a failure), then unwrap."""
        self._eval.close()
        wrapper, self._wrapper = self._wrapper, None
        if wrapper is not None:
            if self._failed:
                wrapper.abandon()
            else:
                wrapper.close()
                self._ps_weight = wrapper.ps_weight
            self.model = self.lightning_module
        super().teardown()


class _ScalerThroughWrapper:
    """A gradient scaler whose ``step`` is the wrapper's ``scaler_step``."""

    def __init__(self, scaler: Any, wrapper: DataParallelModule) -> None:
        self._scaler, self._wrapper = scaler, wrapper

    def step(self, optimizer: Optimizer, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper.scaler_step(self._scaler, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scaler, name)
