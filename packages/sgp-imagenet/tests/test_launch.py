"""Reading the launch environment of torchrun and SLURM from plain dictionaries."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgp_imagenet.launch import (
    LaunchEnv,
    choose_backend,
    describe,
    detect,
    expand_nodelist,
    parse_tasks_per_node,
)

TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "10.0.0.7",
    "MASTER_PORT": "29400",
}

SLURM = {
    "SLURM_PROCID": "6",
    "SLURM_NTASKS": "12",
    "SLURM_LOCALID": "2",
    "SLURM_TASKS_PER_NODE": "4(x3)",
    "SLURM_JOB_NODELIST": "learnfair[0101-0102,0207]",
    "SLURM_JOB_ID": "1234567",
}


# --- expand_nodelist --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("gpu5", ["gpu5"]),
        ("a,b,c", ["a", "b", "c"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("a[1-2]b", ["a1b", "a2b"]),
        ("a[1-2]b,c[3]", ["a1b", "a2b", "c3"]),
        ("x[1,3],y[05-06],z", ["x1", "x3", "y05", "y06", "z"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("[1-2]", ["1", "2"]),
        ("n[7]", ["n7"]),
        ("host-1.cluster.org", ["host-1.cluster.org"]),
    ],
)
def test_expand_nodelist(text: str, hosts: list[str]) -> None:
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("node[1-3", "'[' is never closed"),
        ("node1-3]", "']' without '['"),
        ("node[1-[2]]", "nested '['"),
        ("a,,b", "empty host name"),
        ("a,", "empty host name"),
        ("node[]", "empty brackets"),
        ("node[3-1]", "range '3-1' runs backwards"),
        ("node[a-c]", "'a-c' inside brackets is not N or N-M"),
        ("node[1-2,]", "'' inside brackets is not N or N-M"),
        ("node[1--2]", "'1--2' inside brackets is not N or N-M"),
        ("a b", "it contains whitespace"),
    ],
)
def test_expand_nodelist_rejects_malformed(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        expand_nodelist(text)
    assert str(info.value).startswith(f"malformed SLURM node list {text!r}: {reason}")


@given(
    st.lists(
        st.tuples(st.sampled_from(["n", "gpu", "x-"]), st.integers(0, 50), st.integers(0, 5)),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 3),
)
def test_expand_nodelist_matches_hand_expansion(
    groups: list[tuple[str, int, int]], width: int
) -> None:
    text = ",".join(f"{p}[{lo:0{width}d}-{lo + n:0{width}d}]" for p, lo, n in groups)
    expected = [f"{p}{i:0{width}d}" for p, lo, n in groups for i in range(lo, lo + n + 1)]
    assert expand_nodelist(text) == expected


# --- parse_tasks_per_node ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("4", [4]),
        ("4(x2),2", [4, 4, 2]),
        ("2,3(x3)", [2, 3, 3, 3]),
        ("1(x1)", [1]),
    ],
)
def test_parse_tasks_per_node(text: str, counts: list[int]) -> None:
    assert parse_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "4(2)", "x2", "4(x0)", "0", "4,,2", "-1"])
def test_parse_tasks_per_node_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^SLURM_TASKS_PER_NODE: "):
        parse_tasks_per_node(text)


# --- detect: torchrun -------------------------------------------------------------------


def test_detect_torchrun() -> None:
    env = detect(TORCHRUN)
    assert env == LaunchEnv(
        rank=5,
        world_size=8,
        local_rank=1,
        local_world_size=4,
        master_addr="10.0.0.7",
        master_port=29400,
        launcher="torchrun",
    )
    assert env.node_rank == 1
    assert env.master == "10.0.0.7:29400"


def test_torchrun_wins_over_slurm() -> None:
    assert detect(SLURM | TORCHRUN).launcher == "torchrun"
    assert detect(SLURM | TORCHRUN).rank == 5


def test_torchrun_defaults_to_one_node_and_localhost() -> None:
    env = detect({"RANK": "2", "WORLD_SIZE": "3"})
    assert (env.local_rank, env.local_world_size, env.node_rank) == (2, 3, 0)
    assert (env.master_addr, env.master_port) == ("127.0.0.1", 29500)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "x"}, "RANK must be an integer; got 'x'"),
        ({"WORLD_SIZE": "8.0"}, "WORLD_SIZE must be an integer; got '8.0'"),
        # an empty variable counts as unset: LOCAL_RANK defaults to RANK, too big here
        ({"LOCAL_RANK": ""}, "LOCAL_RANK=5 must be < LOCAL_WORLD_SIZE=4"),
        ({"RANK": "8"}, "RANK=8 must be < WORLD_SIZE=8"),
        ({"RANK": "-1"}, "RANK must be >= 0; got -1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1; got 0"),
        ({"LOCAL_RANK": "4"}, "LOCAL_RANK=4 must be < LOCAL_WORLD_SIZE=4"),
        ({"LOCAL_WORLD_SIZE": "16"}, "LOCAL_WORLD_SIZE=16 must be <= WORLD_SIZE=8"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT must be an integer; got 'http'"),
        ({"MASTER_PORT": "70000"}, r"MASTER_PORT must be in \[1, 65535\]; got '70000'"),
    ],
)
def test_detect_torchrun_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect(TORCHRUN | change)


# --- detect: SLURM ----------------------------------------------------------------------


def test_detect_slurm() -> None:
    env = detect(SLURM)
    assert env == LaunchEnv(
        rank=6,
        world_size=12,
        local_rank=2,
        local_world_size=4,
        master_addr="learnfair0101",
        master_port=10000 + 1234567 % 50000,
        launcher="slurm",
    )
    assert env.master_port == 44567
    assert env.node_rank == 1


def test_slurm_ntasks_per_node_wins_over_tasks_per_node() -> None:
    env = detect(SLURM | {"SLURM_NTASKS_PER_NODE": "6", "SLURM_LOCALID": "5"})
    assert (env.local_world_size, env.node_rank) == (6, 1)


def test_slurm_uneven_tasks_per_node_uses_first_entry() -> None:
    env = detect(SLURM | {"SLURM_TASKS_PER_NODE": "4(x2),2", "SLURM_NTASKS": "10"})
    assert env.local_world_size == 4


def test_slurm_master_variables_override() -> None:
    env = detect(SLURM | {"MASTER_ADDR": "head", "MASTER_PORT": "12345"})
    assert (env.master_addr, env.master_port) == ("head", 12345)
    no_list = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}
    assert detect(no_list | {"MASTER_ADDR": "head"}).master_addr == "head"


def test_slurm_falls_back_to_slurm_nodelist_and_port_29500() -> None:
    environ = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NODELIST": "cpu[3-4]",
    }
    env = detect(environ)
    assert (env.master_addr, env.master_port) == ("cpu3", 29500)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (0, 1, 0)


def test_slurm_job_id_port_stays_in_range() -> None:
    for job_id, port in [("0", 10000), ("49999", 59999), ("50000", 10000), ("99", 10099)]:
        assert detect(SLURM | {"SLURM_JOB_ID": job_id}).master_port == port


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_PROCID": "six"}, "SLURM_PROCID must be an integer; got 'six'"),
        ({"SLURM_PROCID": "12"}, "SLURM_PROCID=12 must be < SLURM_NTASKS=12"),
        ({"SLURM_LOCALID": "4"}, r"SLURM_LOCALID=4 must be < SLURM_TASKS_PER_NODE=4"),
        ({"SLURM_NTASKS_PER_NODE": "two"}, "SLURM_NTASKS_PER_NODE must be an integer"),
        ({"SLURM_TASKS_PER_NODE": "4(x"}, "SLURM_TASKS_PER_NODE: '4\\(x' in"),
        ({"SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID must be an integer; got 'abc'"),
        ({"SLURM_JOB_NODELIST": "n[1-"}, "malformed SLURM node list 'n\\[1-'"),
    ],
)
def test_detect_slurm_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect(SLURM | change)


def test_slurm_local_id_without_tasks_per_node() -> None:
    environ = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
    with pytest.raises(ValueError, match=r"SLURM_LOCALID=1 must be < tasks per node \(default\)"):
        detect(environ | {"MASTER_ADDR": "h"})


def test_slurm_without_node_list_or_master_addr() -> None:
    environ = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}
    with pytest.raises(ValueError, match="MASTER_ADDR or SLURM_JOB_NODELIST"):
        detect(environ)


# --- detect: single process -------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"PATH": "/usr/bin"},
        {"RANK": "1"},  # WORLD_SIZE missing: not torchrun
        {"SLURM_PROCID": "0", "SLURM_JOB_ID": "5"},  # SLURM_NTASKS missing: not an srun step
    ],
)
def test_detect_single(environ: dict[str, str]) -> None:
    assert detect(environ) == LaunchEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        master_addr="127.0.0.1",
        master_port=29500,
        launcher="single",
    )


def test_detect_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name in TORCHRUN or name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (detect().launcher, detect().rank) == ("torchrun", 1)


# --- LaunchEnv --------------------------------------------------------------------------


def _env(**change: object) -> LaunchEnv:
    fields: dict[str, object] = {
        "rank": 0,
        "world_size": 2,
        "local_rank": 0,
        "local_world_size": 2,
        "master_addr": "h",
        "master_port": 1,
        "launcher": "single",
    }
    return LaunchEnv(**(fields | change))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"rank": 2}, ValueError, "rank=2 must be < world_size=2"),
        ({"local_rank": 2}, ValueError, "local_rank=2 must be < local_world_size=2"),
        ({"local_world_size": 3}, ValueError, "local_world_size=3 must be <= world_size=2"),
        ({"world_size": 0}, ValueError, "world_size must be >= 1"),
        ({"rank": 1.0}, TypeError, "rank must be an int"),
        ({"master_port": 0}, ValueError, r"master_port must be in \[1, 65535\]"),
        ({"master_addr": ""}, ValueError, "master_addr must not be empty"),
        ({"launcher": "mpirun"}, ValueError, "launcher must be"),
    ],
)
def test_launch_env_validates(change: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _env(**change)


def test_master_brackets_ipv6_and_torch_environ() -> None:
    env = _env(master_addr="fe80::1", master_port=29500, rank=1, local_rank=1)
    assert env.master == "[fe80::1]:29500"
    assert env.torch_environ() == {
        "MASTER_ADDR": "fe80::1",
        "MASTER_PORT": "29500",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }


# --- choose_backend ---------------------------------------------------------------------


def test_choose_backend() -> None:
    assert choose_backend("auto", cuda_available=True) == "nccl"
    assert choose_backend("auto", cuda_available=False) == "gloo"
    assert choose_backend("nccl", cuda_available=True) == "nccl"
    assert choose_backend("gloo", cuda_available=True) == "gloo"
    assert choose_backend("gloo", cuda_available=False) == "gloo"


def test_choose_backend_errors() -> None:
    with pytest.raises(ValueError, match=r"^--backend nccl needs CUDA"):
        choose_backend("nccl", cuda_available=False)
    with pytest.raises(ValueError, match=r"^--backend must be one of auto, nccl, gloo; got 'mpi'"):
        choose_backend("mpi", cuda_available=True)
    with pytest.raises(ValueError, match="--backend"):
        choose_backend("NCCL", cuda_available=True)


# --- describe ---------------------------------------------------------------------------


def test_describe_slurm_lists_sorted_variables() -> None:
    environ = SLURM | {"HOME": "/root", "NCCL_DEBUG": "INFO", "PATH": "/bin"}
    text = describe(detect(environ), backend="nccl", devices=["cuda:2"], environ=environ)
    lines = text.splitlines()
    assert lines[:6] == [
        "launcher:   slurm",
        "rank:       6 of 12 (local rank 2 of 4, node 1)",
        "master:     learnfair0101:44567",
        "backend:    nccl",
        "devices:    cuda:2",
        "variables:",
    ]
    assert lines[6:] == [
        "  NCCL_DEBUG=INFO",
        "  SLURM_JOB_ID=1234567",
        "  SLURM_JOB_NODELIST=learnfair[0101-0102,0207]",
        "  SLURM_LOCALID=2",
        "  SLURM_NTASKS=12",
        "  SLURM_PROCID=6",
        "  SLURM_TASKS_PER_NODE=4(x3)",
    ]
    assert "HOME" not in text and "PATH" not in text
    assert not text.endswith("\n")


def test_describe_torchrun_and_no_devices() -> None:
    environ = TORCHRUN | {"TORCHELASTIC_RUN_ID": "abc", "GROUP_RANK": "1"}
    text = describe(detect(environ), backend="gloo", devices=[], environ=environ)
    assert "launcher:   torchrun" in text
    assert "rank:       5 of 8 (local rank 1 of 4, node 1)" in text
    assert "master:     10.0.0.7:29400" in text
    assert "devices:    (none)" in text
    names = [line.split("=")[0].strip() for line in text.splitlines() if line.startswith("  ")]
    assert names == sorted([*TORCHRUN, "TORCHELASTIC_RUN_ID", "GROUP_RANK"])


def test_describe_single() -> None:
    text = describe(detect({}), backend="gloo", devices=["cpu", "cpu"], environ={})
    assert text.splitlines()[-2:] == ["devices:    cpu, cpu", "variables:  (none)"]
