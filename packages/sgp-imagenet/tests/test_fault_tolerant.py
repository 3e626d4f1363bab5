"""``sgp-imagenet train --fault-tolerant``: independent processes, a coordinator, lost ranks.

The end-to-end tests run the installed console script as plain processes (no torchrun),
each told only the coordinator's address and the job's size, as a user would launch
them. A process kills itself at an exact iteration through the run's testing hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from gossip_topology import Generation
from sgp_imagenet.cli import main
from sgp_imagenet.fault_tolerant import Generations, leaves_on_signal, parse_address
from sgp_imagenet.run import SIGNAL_HOOK

SCRIPT = Path(sys.executable).parent / "sgp-imagenet"
GOSSIP_TIMEOUT = 5.0


def test_parse_address() -> None:
    assert parse_address("10.0.0.7:29400") == ("10.0.0.7", 29400)
    assert parse_address("node-3.cluster:1") == ("node-3.cluster", 1)
    for bad in ("10.0.0.7", ":29400", "host:0", "host:70000", "host:port"):
        with pytest.raises(ValueError, match="--coordinator must be HOST:PORT"):
            parse_address(bad)


def test_a_generation_change_is_one_line_and_one_summary_row() -> None:
    class Seen:  # what Generations reads of a FaultTolerance
        history: ClassVar[list[Any]] = []

    generations = Generations(Seen())  # type: ignore[arg-type]
    from gossip_nn import GenerationChange
    from gossip_topology import RankRecord

    change = GenerationChange(
        ended=Generation(0, (0, 1, 2, 3)), started=Generation(1, (0, 1, 3, 4)),
        reason="rank 1 (member 1): GossipPeerError with rank 2 at gossip step 7",
        lost=(2,), joined=(4,), at=generations._opened + 12.5, seconds=3.25,
        record=RankRecord(completed=7), weight=0.5,
    )  # fmt: skip
    Seen.history.append(change)
    assert generations.changes() == [change] and generations.changes() == []
    row = generations.rows[0]
    assert row == {
        "generation": 1, "members": [0, 1, 3, 4], "lost": [2], "joined": [4],
        "reason": change.reason, "at_s": 12.5, "reconfigure_s": 3.25,
    }  # fmt: skip
    assert Generations.line(row) == (
        f"generation 1: 4 member(s), lost [2], joined [4]; reconfigured in 3.25 s ({change.reason})"
    )


DIGITS = ["train", "--dataset", "digits", "--arch", "small-cnn"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*DIGITS, "--fault-tolerant"], "--fault-tolerant needs --coordinator HOST:PORT"),
        ([*DIGITS, "--coordinator", "h:1"], "--coordinator is for --fault-tolerant runs"),
        ([*DIGITS, "--fault-tolerant", "--coordinator", "h"], "--coordinator must be HOST:PORT"),
        (
            [*DIGITS, "--fault-tolerant", "--coordinator", "h:1", "--nprocs-per-node", "2"],
            "does not combine with nprocs_per_node yet: each needs every rank in a "
            "collective, or a group that outlives a generation (--nprocs-per-node)",
        ),
        (
            [*DIGITS, "--fault-tolerant", "--coordinator", "h:1", "--algorithm", "ar"],
            "--fault-tolerant: fault_tolerance: AR-SGD all-reduces over every rank",
        ),
        (
            [*DIGITS, "--fault-tolerant", "--coordinator", "h:1", "--compression", "int8"],
            "does not combine with compression yet",
        ),
        (
            [*DIGITS, "--fault-tolerant", "--coordinator", "h:1", "--min-members", "0"],
            "--min-members must be >= 1",
        ),
        (
            [*DIGITS, "--fault-tolerant", "--coordinator", "h:1", "--backend", "nccl"],
            "--fault-tolerant gossips over gloo",
        ),
    ],
)
def test_bad_fault_tolerant_flags_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: Any
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_coordinator_stops_the_process_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), *DIGITS, "--fault-tolerant", "--coordinator", "127.0.0.1:9",
         "--world-size", "2", "--membership-timeout", "2", "--workers", "0"],
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "sgp-imagenet: stopped: cannot reach the coordinator at 127.0.0.1:9" in result.stdout


# ----------------------------------------------------------------------- end to end
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", SIGNAL_HOOK}}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@contextmanager
def _coordinator() -> Iterator[tuple[int, list[str]]]:
    """A coordinator process: its port, and its log lines as they come."""
    proc = subprocess.Popen(
        [str(SCRIPT), "coordinator", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        yield int(lines[0].split("127.0.0.1:")[1].split()[0]), lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=30)


def _wait_for(lines: list[str], text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert time.monotonic() < deadline, f"no {text!r} in the coordinator's log: {lines}"
        time.sleep(0.1)


def _train_argv(tmp: Path, port: int, n: int, *flags: str) -> list[str]:
    """A worker's ``sgp-imagenet train --fault-tolerant`` command line."""
    return [
        *DIGITS, "--fault-tolerant", "--coordinator", f"127.0.0.1:{port}",
        "--world-size", str(n), "--gossip-timeout", str(GOSSIP_TIMEOUT), "--workers", "0",
        "--batch-size", "16", "--warmup-epochs", "0", "--lr", "0.8", "--print-freq", "5",
        "--progress", "lines", "--no-tensorboard", "--log-dir", str(tmp / "logs"),
        "--checkpoint-dir", str(tmp / "ckpt"), "--seed", "3", *flags,
    ]  # fmt: skip


def _launch(tmp: Path, port: int, n: int, *flags: str, hook: str = "") -> subprocess.Popen[str]:
    """One worker process, launched on its own as a user would."""
    argv = [str(SCRIPT), *_train_argv(tmp, port, n, *flags)]
    env = _env(**({SIGNAL_HOOK: hook} if hook else {}))
    return subprocess.Popen(
        argv, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, text))
    return out


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
def test_a_killed_rank_is_survived_its_restart_joins_and_a_preemption_resumes(
    tmp_path: Path,
) -> None:
    n = 4
    long_run = ("--epochs", "100", "--max-iters-per-epoch", "20")
    with _coordinator() as (port, coordinator):
        # rank 2 of generation 0 dies without a word after its 6th iteration
        procs = [_launch(tmp_path, port, n, *long_run, hook="2:6:SIGKILL") for _ in range(n)]
        while all(p.poll() is None for p in procs):
            time.sleep(0.1)
        killed = [p for p in procs if p.poll() is not None]
        assert [p.returncode for p in killed] == [-signal.SIGKILL]
        _wait_for(coordinator, "(lost [2])")
        survivors = [p for p in procs if p not in killed]
        restarted = _launch(tmp_path, port, n, *long_run)  # the same command again
        _wait_for(coordinator, "(joined [4])")
        time.sleep(2.0)  # train a little as four again
        survivors[0].send_signal(signal.SIGTERM)  # a preemption: every member stops
        stopped = _finish([*survivors, restarted])
    for code, text in stopped:
        assert code == 75, text[-3000:]  # each wrote its checkpoint at the agreed iteration
    assert any("stopped at the agreed iteration" in text for _, text in stopped)
    summary_lines = "".join(text for _, text in stopped)
    assert "generation 1: 3 member(s), lost [2]" in summary_lines
    assert "joined [4]" in summary_lines
    positions = {
        path.name: torch.load(path, weights_only=False, map_location="cpu")["progress"]
        for path in sorted((tmp_path / "ckpt").glob("checkpoint.rank[0-9].pt"))
    }
    assert sorted(positions) == [f"checkpoint.rank{r}.pt" for r in range(n)]
    assert len({tuple(p.values()) for p in positions.values()}) == 1, positions
    stop = next(iter(positions.values()))
    # every process logged under its member id, the joiner too
    names = sorted(p.name for p in (tmp_path / "logs").glob("member*.csv"))
    assert names == [f"member{m}.csv" for m in range(5)]

    # relaunch the job (a new coordinator, as a requeued job would start one): the four
    # resume from their own checkpoints and finish two epochs after the one they were
    # in, or the seventh (where the preemption came depends on the machine's pace: the
    # run must be long enough to learn whatever it was)
    last = max(stop["epoch"] + 2, 6)
    epochs = str(last + 1)
    flags = ("--epochs", epochs, "--max-iters-per-epoch", "20")
    with _coordinator() as (port, _):
        results = _finish([_launch(tmp_path, port, n, *flags) for _ in range(n)])
    for code, text in results:
        assert code == 0, text[-3000:]
    resumed = next(text for _, text in results if "resuming from" in text)
    assert "resuming from the ranks' own checkpoints" in resumed
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["generations"] == [] and summary["final_world_size"] == n
    assert summary["epochs"][-1]["epoch"] == last
    # it learned, through it all: far above chance (10%), where a model that the kill,
    # the join or the resume had broken would stay (such runs end at 67% to 79%; the
    # bound leaves room for the machine's pace, which moves the preemption)
    assert summary["epochs"][-1]["average_top1"] > 50.0


def _iterations_logged(csv_file: Path, per_epoch: int) -> int:
    """How far a process has trained, from its CSV log (training rows only)."""
    if not csv_file.exists():
        return 0
    rows = [line.split(",") for line in csv_file.read_text().splitlines()[1:]]
    done = [int(r[0]) * per_epoch + int(r[1]) + 1 for r in rows if r and r[-1] == ""]
    return max(done, default=0)


def _final_top1(log_dir: Path) -> float:
    summary = json.loads((log_dir / "summary.json").read_text())
    return float(summary["epochs"][-1]["average_top1"])


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
def test_a_rank_lost_at_30_and_back_at_60_percent_costs_under_a_point(tmp_path: Path) -> None:
    # long enough that the replacement, started at 60%, is up (about 10 s on 2 cores)
    # well before the end
    n, epochs, per_epoch = 4, 18, 20
    flags = ("--epochs", str(epochs), "--max-iters-per-epoch", str(per_epoch),
             "--lr-schedule", "14:0.1")  # fmt: skip
    total = epochs * per_epoch
    (tmp_path / "calm").mkdir()
    with _coordinator() as (port, _):
        calm = _finish([_launch(tmp_path / "calm", port, n, *flags) for _ in range(n)])
    assert [code for code, _ in calm] == [0] * n, calm[0][1][-3000:]

    (tmp_path / "lossy").mkdir()
    hook = f"2:{int(0.3 * total)}:SIGKILL"  # rank 2 dies at 30% of training
    with _coordinator() as (port, coordinator):
        procs = [_launch(tmp_path / "lossy", port, n, *flags, hook=hook) for _ in range(n)]
        while _iterations_logged(tmp_path / "lossy" / "logs" / "member0.csv", per_epoch) < (
            0.6 * total
        ):
            assert all(p.poll() in (None, -signal.SIGKILL) for p in procs)
            time.sleep(0.05)
        killed = [p for p in procs if p.poll() is not None]
        assert [p.returncode for p in killed] == [-signal.SIGKILL]
        restarted = _launch(tmp_path / "lossy", port, n, *flags)  # back at 60%
        lossy = _finish([p for p in procs if p not in killed] + [restarted])
    assert [code for code, _ in lossy] == [0] * n, lossy[-1][1][-3000:]
    assert any("(joined [4])" in line for line in coordinator)
    calm_top1, lossy_top1 = (
        _final_top1(tmp_path / "calm" / "logs"),
        _final_top1(tmp_path / "lossy" / "logs"),
    )
    print(f"final network-average top-1: undisturbed {calm_top1:.2f}%, lossy {lossy_top1:.2f}%")
    assert calm_top1 > 90.0
    assert abs(calm_top1 - lossy_top1) <= 1.0


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
@pytest.mark.parametrize("algorithm", ["osgp", "dpsgd", "adpsgd"])
def test_every_gossip_algorithm_survives_a_killed_rank(tmp_path: Path, algorithm: str) -> None:
    n = 4
    flags = ("--algorithm", algorithm, "--epochs", "2", "--max-iters-per-epoch", "15")
    with _coordinator() as (port, coordinator):
        procs = [_launch(tmp_path, port, n, *flags, hook="1:5:SIGKILL") for _ in range(n)]
        results = _finish(procs)
    codes = sorted(code for code, _ in results)
    assert codes == [-signal.SIGKILL, 0, 0, 0], [text[-2000:] for _, text in results]
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    [change] = summary["generations"]
    assert change["lost"] == [1] and change["members"] == [0, 2, 3]
    assert change["reconfigure_s"] <= GOSSIP_TIMEOUT + 5.0
    assert len(summary["epochs"]) == 2 and summary["final_world_size"] == 3
    assert any("(lost [1])" in line for line in coordinator)


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
def test_losing_the_coordinator_stops_every_rank_with_one_line_and_a_checkpoint(
    tmp_path: Path,
) -> None:
    n = 3
    flags = ("--epochs", "100", "--max-iters-per-epoch", "20")
    with _coordinator() as (port, coordinator):
        procs = [_launch(tmp_path, port, n, *flags) for _ in range(n)]
        _wait_for(coordinator, "generation 0: 3 member(s)")
        logged = tmp_path / "logs" / "member0.csv"
        while _iterations_logged(logged, 20) < 10:  # training is under way
            assert all(p.poll() is None for p in procs)
            time.sleep(0.05)
    # the context has stopped the coordinator: every rank notices at its next step
    results = _finish(procs, timeout=120)
    for code, text in results:
        assert code == 1, text[-3000:]
        assert "sgp-imagenet: stopped: member" in text
        assert "the membership store did not answer" in text
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint.rank[0-9].pt"))
    assert saved == [f"checkpoint.rank{r}.pt" for r in range(n)]


def _torchrun_host(tmp: Path, port: int, n: int, per_host: int, *flags: str) -> Any:
    """One host's launcher: ``torchrun --max-restarts 1`` running ``per_host`` workers."""
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(per_host), "--max-restarts", "1", "--no-python",
        str(SCRIPT), *_train_argv(tmp, port, n, *flags),
    ]  # fmt: skip
    env = _env(**{SIGNAL_HOOK: "1:5:SIGKILL"})  # the worker at rank 1 dies at iteration 5
    return subprocess.Popen(
        argv, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.faults  # a real run killed or stopped: nox -s faults
def test_one_torchrun_per_host_restarts_its_workers_and_they_join_the_running_job(
    tmp_path: Path,
) -> None:
    """torchrun restarts all of a host's workers when one dies: the job loses both, the
    other host's workers train on, and the restarted pair joins them."""
    n, per_host = 4, 2
    flags = ("--epochs", "6")  # long enough for torchrun's restart (some 7 s here)
    with _coordinator() as (port, coordinator):
        hosts = [_torchrun_host(tmp_path, port, n, per_host, *flags) for _ in range(2)]
        results = _finish(hosts, timeout=300)
    for code, text in results:
        assert code == 0, text[-3000:]
    restarted = [text for _, text in results if "Restarting" in text or "restart" in text]
    assert len(restarted) == 1, [text[-2000:] for _, text in results]
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    lost = sorted(m for change in summary["generations"] for m in change["lost"])
    joined = sorted(m for change in summary["generations"] for m in change["joined"])
    assert len(lost) == per_host and len(joined) == per_host, summary["generations"]
    assert summary["final_world_size"] == n and len(summary["epochs"]) == 6
    assert any("joined" in line for line in coordinator)


@pytest.mark.parametrize(
    ("env", "leaves"),
    [
        ({}, False),  # plain processes, srun: a signal preempts the job
        ({"TORCHELASTIC_RUN_ID": "j", "TORCHELASTIC_MAX_RESTARTS": "0"}, False),
        ({"TORCHELASTIC_RUN_ID": "j", "TORCHELASTIC_MAX_RESTARTS": "2"}, True),
        (  # restarts used up: torchrun will not start it again
            {
                "TORCHELASTIC_RUN_ID": "j",
                "TORCHELASTIC_MAX_RESTARTS": "2",
                "TORCHELASTIC_RESTART_COUNT": "2",
            },
            False,
        ),
    ],
)
def test_a_signal_means_leaving_only_under_a_torchrun_that_restarts(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], leaves: bool
) -> None:
    for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert leaves_on_signal() is leaves
