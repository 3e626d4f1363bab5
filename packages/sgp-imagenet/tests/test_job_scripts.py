"""The job scripts in ``job_scripts/``: the SLURM template ``slurm_train.sh``, dry-run for
every algorithm (``ALGO``) and network (``NET``) with ``srun``/``sgp-imagenet`` stubs, and
``torchrun_example.sh``. Each ``sgp-imagenet train`` command is checked by the real
argument parser against the 2019 recipe.

The scripts are also run the way the docs say, from the root of a clone (the SLURM
template as sbatch runs it: a copy in a spool directory, in the submit directory), and
the documentation site's page shows them through ``pymdownx.snippets``, not as copies.

No SLURM, GPU or network is needed. Where ``job_scripts/`` is not next to ``tests/``
(tests run from an installed wheel) every test here skips.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gossip_nn import ALGORITHMS
from sgp_imagenet.cli import build_parser

JOB_SCRIPTS = Path(__file__).resolve().parents[1] / "job_scripts"
ROOT = JOB_SCRIPTS.parents[2]  # the repository's root, in a clone
FROM_ROOT = "packages/sgp-imagenet/job_scripts"  # where the docs say the scripts are
CLUSTER_PAGE = "docs/guides/cluster.md"
TEMPLATE = "slurm_train.sh"
TORCHRUN = "torchrun_example.sh"
SCRIPTS = (TEMPLATE, TORCHRUN)

# The networks the template knows, and what each must export to the tasks; None: left
# unset, to NCCL's and gloo's own choice.
NETWORK_ENV: dict[str, dict[str, str | None]] = {
    "ethernet": {
        "NCCL_IB_DISABLE": "1",
        "NCCL_SOCKET_IFNAME": "eth0",
        "GLOO_SOCKET_IFNAME": "eth0",
    },
    "infiniband": {"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": None, "GLOO_SOCKET_IFNAME": None},
}
NETWORKS = tuple(NETWORK_ENV)
DEFAULT_NETWORK = "ethernet"  # the paper's setting
COMBINATIONS = [(algorithm, network) for algorithm in ALGORITHMS for network in NETWORKS]

# The paper's ResNet-50 settings, the same in every script and for every algorithm.
RECIPE: dict[str, Any] = {
    "arch": "resnet50",
    "batch_size": 32,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "epochs": 90,
    "lr_schedule": "30:0.1 60:0.1 80:0.1",
    "warmup_epochs": 5.0,
    "amp": "bf16",
    "channels_last": True,
    "workers": 8,
    "checkpoint_every": 1000,
    "resume": "auto",
    "print_freq": 100,
    "progress": "lines",
}
DIRECTED = {"topology": "npeer-dynamic-directed-exponential", "peers_per_itr_schedule": "0:1"}

_SBATCH_LINE = re.compile(r"#SBATCH --([a-z][a-z-]*)(?:=(\S+))?")
_BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(_BASH is None, reason="needs bash")


def _algorithm_settings(algorithm: str) -> dict[str, Any]:
    """What the 2019 recipe sets for ``algorithm``, as parsed ``train`` attributes."""
    settings: dict[str, Any] = {
        "algorithm": algorithm,
        "topology": None,
        "synch_freq": 1 if algorithm == "osgp" else 0,  # OSGP's one-iteration staleness
        "checkpoint_all": algorithm != "ar",  # only AR-SGD's ranks hold the same model
        "nprocs_per_node": 1,
        "requeue": True,
    }
    if algorithm not in ("ar", "adpsgd"):  # AR-SGD has no graph; AD-PSGD keeps its own
        settings.update(DIRECTED)
    return settings


def _read(name: str) -> str:
    if not JOB_SCRIPTS.is_dir():
        pytest.skip(f"{JOB_SCRIPTS} is missing (tests run from an installed package)")
    path = JOB_SCRIPTS / name
    assert path.is_file(), f"{path} is missing"
    return path.read_text()


def _logical_lines(text: str) -> list[str]:
    """The script's lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def _code_lines(text: str) -> list[str]:
    """The logical lines that are neither blank nor comments."""
    return [ln for ln in _logical_lines(text) if ln.strip() and not ln.lstrip().startswith("#")]


def _case_labels(text: str, variable: str) -> list[str]:
    """The patterns of the ``case "$VARIABLE" in ... esac`` block, in order."""
    block = re.search(rf'^case "\${variable}" in\n(.*?)^esac$', text, re.MULTILINE | re.DOTALL)
    assert block, f'{TEMPLATE}: no case "${variable}" in ... esac block'
    return re.findall(r"^    (\S+)\)$", block.group(1), re.MULTILINE)


def _parse(argv: list[str], where: str) -> argparse.Namespace:
    known = _train_options()
    for token in argv:
        if token.startswith("--"):  # whole names only: argparse would accept abbreviations
            assert token.split("=")[0] in known, f"{where}: {token} is not a train option"
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: build_parser() rejects {shlex.join(argv)} (see stderr)")


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["train"]
    return parser


def _train_options() -> set[str]:
    """Every option string of the ``train`` subcommand (argparse keeps them private)."""
    return set(_train_parser()._option_string_actions)


# -- files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_executable_bash(name: str) -> None:
    text = _read(name)
    path = JOB_SCRIPTS / name
    assert text.startswith("#!/bin/bash\n"), f"{name}: first line must be #!/bin/bash"
    assert os.access(path, os.X_OK), f"{name} is not executable (chmod +x)"
    assert "set -euo pipefail" in _code_lines(text), f"{name}: no 'set -euo pipefail'"
    if _BASH is not None:
        result = subprocess.run([_BASH, "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"bash -n {name}: {result.stderr}"


def test_no_unexpected_scripts_and_readme_lists_all() -> None:
    readme = _read("README.md")
    assert sorted(p.name for p in JOB_SCRIPTS.glob("*.sh")) == sorted(SCRIPTS)
    for name in SCRIPTS:
        assert f"`{name}`" in readme, f"README.md does not mention {name}"


# a command that submits the template; group 1: the path in front of its name
_SUBMIT = re.compile(rf"\bsbatch\s+(?:[^\s`]+\s+)*?([^\s`]*?){re.escape(TEMPLATE)}\b")


def test_readme_shows_a_submit_line_per_algorithm_and_network() -> None:
    readme = _read("README.md")
    # the lines are written from the root of a clone, through `S=...`
    assert f"S={FROM_ROOT}\n" in readme, f"README.md: no 'S={FROM_ROOT}' line"
    submit_lines = [ln for ln in readme.splitlines() if _SUBMIT.search(ln)]
    assert submit_lines and all(_SUBMIT.search(ln).group(1) == "$S/" for ln in submit_lines)  # type: ignore[union-attr]
    for variable, values in (("ALGO", ALGORITHMS), ("NET", NETWORKS)):
        for value in values:
            assert any(re.search(rf"\b{variable}={value}\s", ln) for ln in submit_lines), (
                f"README.md: no 'sbatch {TEMPLATE}' line with {variable}={value}"
            )
        assert f"| `{variable}` |" in _read("README.md"), f"README.md: no row for {variable}"


def test_template_cases_cover_every_algorithm_and_network() -> None:
    text = _read(TEMPLATE)
    # one branch per name, in gossip_nn's order, and a last one that rejects the rest
    assert _case_labels(text, "ALGO") == [*ALGORITHMS, "*"]
    assert _case_labels(text, "NET") == [*NETWORKS, "*"]


# -- SLURM header ----------------------------------------------------------------------


def test_sbatch_header() -> None:
    lines = _read(TEMPLATE).splitlines()
    options: dict[str, str | None] = {}
    first_command = next(
        i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")
    )
    for i, line in enumerate(lines):
        if not line.startswith("#SBATCH"):
            assert "#SBATCH" not in line.lstrip()[:8], f"{TEMPLATE}:{i + 1}: indented #SBATCH"
            continue
        # sbatch stops reading #SBATCH lines at the first command
        assert i < first_command, f"{TEMPLATE}:{i + 1}: #SBATCH after the first command"
        match = _SBATCH_LINE.fullmatch(line)
        assert match, f"{TEMPLATE}:{i + 1}: malformed (want '#SBATCH --option[=value]')"
        assert match.group(1) not in options, f"{TEMPLATE}: --{match.group(1)} given twice"
        options[match.group(1)] = match.group(2)
    for required in ("job-name", "nodes", "ntasks-per-node", "gres", "cpus-per-task", "time"):
        assert options.get(required), f"{TEMPLATE}: no '#SBATCH --{required}=...'"
    assert "requeue" in options and options["requeue"] is None, "no #SBATCH --requeue"
    assert "no-requeue" not in options
    # no "B:": the signal must reach the srun tasks, which checkpoint; not the batch shell
    assert re.fullmatch(r"USR1@\d+", options.get("signal") or ""), (
        f"want '#SBATCH --signal=USR1@SECONDS', got {options.get('signal')!r}"
    )
    assert options.get("open-mode") == "append", "a requeue would truncate the log"
    assert options.get("output"), "no #SBATCH --output"
    gpus = re.fullmatch(r"gpu(?::[\w-]+)?:(\d+)", options["gres"] or "")
    assert gpus, f"--gres={options['gres']} is not gpu:N"
    assert gpus.group(1) == options["ntasks-per-node"], "one task per GPU"


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_never_requeues_itself(name: str) -> None:
    # the application runs `scontrol requeue` after its checkpoint; twice would be wrong
    assert not any("scontrol" in ln for ln in _code_lines(_read(name))), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_paths_are_parameters(name: str) -> None:
    text = _read(name)
    assert re.search(r"^DATA=\$\{DATA:\?", text, re.MULTILINE), f"{name}: DATA must be required"
    for variable in ("CKPT", "LOG_DIR"):
        match = re.search(rf"^{variable}=\$\{{{variable}:-(\$.*)\}}$", text, re.MULTILINE)
        assert match, (
            f"{name}: want {variable}=${{{variable}:-$...}}, a default built from variables"
        )
    for line in _code_lines(text):
        absolute = re.findall(r"""(?:^|[\s="'])(/(?!dev/null)[\w.-]+)""", line)
        assert not absolute, f"{name}: hard-coded path {absolute} in {line.strip()!r}"


# -- dry runs ----------------------------------------------------------------------------


def _stubs(tmp_path: Path) -> Path:
    """``srun``, ``torchrun`` and ``sgp-imagenet`` that record their arguments and
    environment under ``$STUB_OUT``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = '#!/bin/bash\nprintf "%s\\0" "$@" > "$STUB_OUT/argv"\nenv -0 > "$STUB_OUT/env"\n'
    for tool, body in (("srun", record), ("torchrun", record), ("sgp-imagenet", "#!/bin/bash\n")):
        (bin_dir / tool).write_text(body)
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def _dry_run(
    name: str,
    tmp_path: Path,
    env: dict[str, str],
    *script_args: str,
    command: list[str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]]:
    """Run the script with stubs; returns the result, the stub's argv and environment.

    ``command`` replaces ``bash job_scripts/NAME`` (the script's arguments follow it);
    ``cwd`` replaces ``tmp_path`` as the directory it runs in.
    """
    _read(name)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    environ = {
        "PATH": f"{_stubs(tmp_path)}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "STUB_OUT": str(out),
        **env,
    }
    assert _BASH is not None
    result = subprocess.run(
        [*(command or [_BASH, str(JOB_SCRIPTS / name)]), *script_args],
        cwd=cwd or tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if not (out / "argv").exists():
        return result, [], {}
    argv = (out / "argv").read_text().split("\0")[:-1]
    recorded = dict(item.split("=", 1) for item in (out / "env").read_text().split("\0") if item)
    return result, argv, recorded


def _slurm_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {
        "DATA": str(tmp_path / "imagenet"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "sgp-imagenet",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_CPUS_PER_TASK": "10",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS": "32",
        "SLURM_JOB_NODELIST": "gpu[01-04]",
        **settings,
    }


def _srun_train_args(argv: list[str], where: str) -> argparse.Namespace:
    """The ``sgp-imagenet train`` arguments that ``srun`` received, parsed."""
    assert "sgp-imagenet" in argv, f"{where}: srun was not called with sgp-imagenet: {argv}"
    assert argv[: argv.index("sgp-imagenet")] == ["--kill-on-bad-exit=1"]
    return _parse(argv[argv.index("sgp-imagenet") + 1 :], where)


@needs_bash
@pytest.mark.parametrize(("algorithm", "network"), COMBINATIONS)
def test_template_dry_run(algorithm: str, network: str, tmp_path: Path) -> None:
    env = _slurm_env(tmp_path, ALGO=algorithm, NET=network)
    result, argv, task_env = _dry_run(TEMPLATE, tmp_path, env, "--epochs", "1")
    assert result.returncode == 0, result.stderr
    args = _srun_train_args(argv, f"ALGO={algorithm} NET={network}")
    # keyed on the job id, which a requeued job keeps: it finds its checkpoints again
    run = f"{algorithm}-{network}-4242"
    expected = {
        **vars(_train_parser().parse_args([])),
        **RECIPE,
        **_algorithm_settings(algorithm),
        "command": "train",
        "data": str(tmp_path / "imagenet"),
        "checkpoint_dir": str(tmp_path / "checkpoints" / run),
        "log_dir": str(tmp_path / "logs" / run),
        "epochs": 1,  # the script's own arguments are appended, and win
    }
    assert vars(args) == expected
    assert Path(args.checkpoint_dir).is_dir() and Path(args.log_dir).is_dir()
    assert f"{algorithm} on {network}" in result.stdout
    for variable, value in NETWORK_ENV[network].items():
        assert task_env.get(variable) == value, f"NET={network}: {variable}"
    assert task_env["SRUN_CPUS_PER_TASK"] == "10"
    assert task_env["OMP_NUM_THREADS"] == "1"
    assert task_env["NCCL_DEBUG"] == "WARN"


@needs_bash
def test_template_defaults(tmp_path: Path) -> None:
    result, argv, task_env = _dry_run(TEMPLATE, tmp_path, _slurm_env(tmp_path))
    assert result.returncode == 0, result.stderr
    args = _srun_train_args(argv, "no ALGO or NET")
    assert args.algorithm == _train_parser().get_default("algorithm")  # the CLI's default
    assert vars(args).items() >= _algorithm_settings(args.algorithm).items()
    assert Path(args.checkpoint_dir).name == f"{args.algorithm}-{DEFAULT_NETWORK}-4242"
    for variable, value in NETWORK_ENV[DEFAULT_NETWORK].items():
        assert task_env.get(variable) == value, variable


_ALLOWED = {"ALGO": ALGORITHMS, "NET": NETWORKS}


@needs_bash
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (variable, value)
        for variable, allowed in _ALLOWED.items()
        # a typo, a right name in the wrong case, one with a stray space: no guessing
        for value in ("bogus", allowed[-1].upper(), f"{allowed[0]} ")
    ],
)
def test_template_rejects_an_unknown_value(variable: str, value: str, tmp_path: Path) -> None:
    allowed = _ALLOWED[variable]
    # without DATA, too: the bad setting is named first, before the job would need data
    env = _slurm_env(tmp_path, **{variable: value})
    env.pop("DATA")
    result, argv, _ = _dry_run(TEMPLATE, tmp_path, env)
    assert result.returncode == 2
    assert argv == [], "srun ran"
    message = result.stderr.strip()
    assert message == f"{variable} must be one of {', '.join(allowed)}; got '{value}'"
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


@needs_bash
def test_template_outside_sbatch_stops_after_the_checks(tmp_path: Path) -> None:
    # what the README suggests on a login node: valid settings reach the SLURM check
    env = _slurm_env(tmp_path, ALGO="osgp", NET="infiniband")
    env.pop("SLURM_JOB_ID")
    result, argv, _ = _dry_run(TEMPLATE, tmp_path, env)
    assert result.returncode != 0 and argv == []
    assert "submit this script with sbatch" in result.stderr


@needs_bash
@pytest.mark.parametrize("name", SCRIPTS)
def test_dry_run_without_data_fails_before_launching(name: str, tmp_path: Path) -> None:
    env = _slurm_env(tmp_path) if name == TEMPLATE else {}
    env.pop("DATA", None)
    result, argv, _ = _dry_run(name, tmp_path, env)
    assert result.returncode != 0
    assert "set DATA" in result.stderr
    assert argv == []


@needs_bash
def test_template_honours_ckpt_log_dir_and_interfaces(tmp_path: Path) -> None:
    env = _slurm_env(
        tmp_path,
        NET="ethernet",
        CKPT=str(tmp_path / "mine"),
        LOG_DIR=str(tmp_path / "my-logs"),
        NCCL_SOCKET_IFNAME="ens5",
        GLOO_SOCKET_IFNAME="ens5",
    )
    result, argv, task_env = _dry_run(TEMPLATE, tmp_path, env)
    assert result.returncode == 0, result.stderr
    args = _srun_train_args(argv, "CKPT, LOG_DIR")
    assert (args.checkpoint_dir, args.log_dir) == (env["CKPT"], env["LOG_DIR"])
    assert task_env["NCCL_SOCKET_IFNAME"] == task_env["GLOO_SOCKET_IFNAME"] == "ens5"


@needs_bash
def test_torchrun_dry_run_defaults(tmp_path: Path) -> None:
    env = {"DATA": str(tmp_path / "imagenet"), "NODE_RANK": "0", "MASTER_ADDR": "node0"}
    result, argv, _ = _dry_run(TORCHRUN, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert argv[argv.index("--no-python") + 1] == "sgp-imagenet"
    args = _parse(argv[argv.index("--no-python") + 2 :], TORCHRUN)
    expected = {
        **vars(_train_parser().parse_args([])),
        **RECIPE,
        "command": "train",
        "algorithm": "sgp",  # ALGO's default
        "checkpoint_all": True,  # any ALGO may run, gossip included
        "requeue": False,  # no SLURM job to requeue
        "data": env["DATA"],
        "checkpoint_dir": str(tmp_path / "checkpoints" / "sgp-imagenet-sgp"),
        "log_dir": str(tmp_path / "logs" / "sgp-imagenet-sgp"),
    }
    assert vars(args) == expected


@needs_bash
@pytest.mark.parametrize(
    ("rendezvous", "expected"),
    [
        (
            {"NODE_RANK": "1", "MASTER_ADDR": "node0"},
            ["--node-rank=1", "--master-addr=node0", "--master-port=29500"],
        ),
        (
            {"RDZV_ENDPOINT": "node0:29400"},
            ["--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=sgp-imagenet-osgp"],
        ),
    ],
)
@pytest.mark.parametrize("variable", ["ALGO", "ALGORITHM"])  # the name, and its earlier one
def test_torchrun_dry_run(
    rendezvous: dict[str, str], expected: list[str], variable: str, tmp_path: Path
) -> None:
    env = {"DATA": str(tmp_path / "imagenet"), variable: "osgp", **rendezvous}
    result, argv, _ = _dry_run(TORCHRUN, tmp_path, env, "--synch-freq", "1")
    assert result.returncode == 0, result.stderr
    launcher = argv[: argv.index("--no-python")]
    assert launcher == ["--nnodes=2", "--nproc-per-node=8", *expected]
    assert argv[argv.index("--no-python") + 1] == "sgp-imagenet"
    args = _parse(argv[argv.index("--no-python") + 2 :], TORCHRUN)
    assert (args.algorithm, args.synch_freq, args.requeue) == ("osgp", 1, False)
    assert args.checkpoint_dir == str(tmp_path / "checkpoints" / "sgp-imagenet-osgp")


@needs_bash
def test_template_fault_tolerant_dry_run(tmp_path: Path) -> None:
    env = _slurm_env(tmp_path, ALGO="osgp", FT="1", SLURMD_NODENAME="gpu01")
    result, argv, _ = _dry_run(TEMPLATE, tmp_path, env, "--epochs", "1")
    assert result.returncode == 0, result.stderr
    # the step survives a task's death; the tasks meet at the coordinator this script serves
    assert argv[: argv.index("sgp-imagenet")] == ["--kill-on-bad-exit=0"]
    args = _parse(argv[argv.index("sgp-imagenet") + 1 :], "FT=1")
    assert args.fault_tolerant and args.coordinator == "gpu01:29400"
    assert args.world_size == 32 and args.epochs == 1
    assert vars(args).items() >= _algorithm_settings("osgp").items()
    replace = "srun --jobid=4242 --nodes=1 --ntasks=1 --overlap sgp-imagenet train"
    assert replace in result.stdout  # how to start a replacement, which joins
    assert (tmp_path / "logs" / "osgp-ethernet-4242" / "coordinator.log").exists()


@needs_bash
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"FT": "yes"}, "FT must be one of 0, 1; got 'yes'"),
        ({"FT": "1", "ALGO": "adpsgd"}, "FT=1 needs ALGO sgp, osgp or dpsgd; got 'adpsgd'"),
    ],
)
def test_template_rejects_what_cannot_be_fault_tolerant(
    settings: dict[str, str], message: str, tmp_path: Path
) -> None:
    result, argv, _ = _dry_run(TEMPLATE, tmp_path, _slurm_env(tmp_path, **settings))
    assert result.returncode == 2 and argv == []
    assert result.stderr.strip() == message


# -- from the root of a clone, and on the site ---------------------------------------------


def _clone(tmp_path: Path) -> Path:
    """A directory laid out as the root of a clone, with the real job scripts in it."""
    root = tmp_path / "clone"
    (root / FROM_ROOT).parent.mkdir(parents=True)
    (root / FROM_ROOT).symlink_to(JOB_SCRIPTS, target_is_directory=True)
    return root


@needs_bash
def test_template_submitted_from_the_repository_root(tmp_path: Path) -> None:
    # as sbatch runs it: a copy of the script in the spool directory, started in the
    # submit directory, here the root of a clone
    root = _clone(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(root / FROM_ROOT / TEMPLATE, spool / "slurm_script")
    env = _slurm_env(tmp_path, SLURM_SUBMIT_DIR=str(root))
    assert _BASH is not None
    command = [_BASH, str(spool / "slurm_script")]
    result, argv, _ = _dry_run(TEMPLATE, tmp_path, env, command=command, cwd=root)
    assert result.returncode == 0, result.stderr
    args = _srun_train_args(argv, "submitted from the root")
    run = f"{args.algorithm}-{DEFAULT_NETWORK}-4242"
    assert (args.checkpoint_dir, args.log_dir) == (
        str(root / "checkpoints" / run),
        str(root / "logs" / run),
    )
    assert Path(args.checkpoint_dir).is_dir()
    # and what the docs suggest on the login node, by its path from the root
    env.pop("SLURM_JOB_ID")
    login = tmp_path / "login"  # (stubs that have recorded nothing yet)
    login.mkdir()
    command = [_BASH, f"{FROM_ROOT}/{TEMPLATE}"]
    result, argv, _ = _dry_run(TEMPLATE, login, env, command=command, cwd=root)
    assert result.returncode != 0 and argv == []
    assert "submit this script with sbatch" in result.stderr


@needs_bash
def test_torchrun_example_started_from_the_repository_root(tmp_path: Path) -> None:
    root = _clone(tmp_path)
    env = {"DATA": str(tmp_path / "imagenet"), "RDZV_ENDPOINT": "node0:29400"}
    command = [f"{FROM_ROOT}/{TORCHRUN}"]  # executed by its path from the root, as documented
    result, argv, _ = _dry_run(TORCHRUN, tmp_path, env, command=command, cwd=root)
    assert result.returncode == 0, result.stderr
    args = _parse(argv[argv.index("--no-python") + 2 :], f"{TORCHRUN} from the root")
    assert args.checkpoint_dir == str(root / "checkpoints" / "sgp-imagenet-sgp")
    assert args.log_dir == str(root / "logs" / "sgp-imagenet-sgp")


def _page(relative: str) -> str:
    _read(TEMPLATE)  # (skips where the scripts are not in a clone)
    path = ROOT / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing (not a clone of the repository)")
    return path.read_text()


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_cluster_page_includes_each_script_rather_than_a_copy(name: str) -> None:
    page = _page(CLUSTER_PAGE)
    include = f'--8<-- "{FROM_ROOT}/{name}"'
    fenced = re.search(rf"^```bash[^\n]*\n{re.escape(include)}\n```$", page, re.MULTILINE)
    assert fenced, f"{CLUSTER_PAGE}: no fenced block that is only {include}"
    script = _read(name)
    copied = [ln for ln in script.splitlines() if len(ln) > 40 and ln in page.splitlines()]
    assert not copied, f"{CLUSTER_PAGE} copies lines of {name}: {copied[:3]}"


@pytest.mark.parametrize(
    "relative",
    [
        CLUSTER_PAGE,
        "docs/tutorials/train-resnet50.md",
        "packages/sgp-imagenet/README.md",
        "packages/sgp-imagenet/job_scripts/README.md",
        *(f"{FROM_ROOT}/{name}" for name in SCRIPTS),
    ],
)
def test_the_paths_the_docs_give_work_from_the_repository_root(relative: str) -> None:
    text = _page(relative).replace("$S/", f"{FROM_ROOT}/")
    named = set(re.findall(r"packages/sgp-imagenet/job_scripts/[\w.-]*", text))
    assert named, f"{relative}: names no script by its path from the root"
    for path in named:
        assert (ROOT / path).exists(), f"{relative}: {path} does not exist from the root"
    # every submit line names the template by that path
    for line in _logical_lines(text):
        submit = _SUBMIT.search(line)
        if submit:
            assert submit.group(1) == f"{FROM_ROOT}/", f"{relative}: {line.strip()!r}"
