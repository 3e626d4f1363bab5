"""The job scripts in ``job_scripts/``: shell syntax, ``#SBATCH`` headers, network settings,
and every ``sgp-imagenet train`` command checked by the real argument parser, both read
statically and captured from a dry run of the script with ``srun``/``torchrun`` stubs.

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

import pytest

from sgp_imagenet.cli import build_parser

JOB_SCRIPTS = Path(__file__).resolve().parents[1] / "job_scripts"
ALGORITHMS = ("ar", "sgp", "osgp", "dpsgd", "adpsgd")
NETWORKS = ("ethernet", "infiniband")
GOSSIP = ("sgp", "osgp", "dpsgd", "adpsgd")
SLURM_SCRIPTS = [f"slurm_{a}_{n}.sh" for a in ALGORITHMS for n in NETWORKS]
TORCHRUN = "torchrun_example.sh"
ALL_SCRIPTS = [*SLURM_SCRIPTS, TORCHRUN]

_SBATCH_LINE = re.compile(r"#SBATCH --([a-z][a-z-]*)(?:=(\S+))?")
_VARIABLE = re.compile(r'"\$@"|\$\{(\w+)[^}]*\}|\$(\w+)')
_LITERAL_DEFAULT = re.compile(r"^(\w+)=\$\{\1:-([^${}\s]*)\}$", re.MULTILINE)
_BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(_BASH is None, reason="needs bash")


def _algorithm(name: str) -> str:
    return name.split("_")[1]


def _network(name: str) -> str:
    return name.removesuffix(".sh").split("_")[2]


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


def _substitute(line: str, text: str) -> str:
    """Replace ``"$@"`` by nothing, a variable with a literal default (``X=${X:-sgp}``) by
    that default, and any other variable by ``__NAME__``."""
    defaults: dict[str, str] = dict(_LITERAL_DEFAULT.findall(text))

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name is None:
            return ""
        return defaults.get(name, f"__{name}__")

    return _VARIABLE.sub(value, line)


def _train_invocations(text: str) -> list[list[str]]:
    """The arguments after ``sgp-imagenet`` of each ``sgp-imagenet train`` command."""
    found = []
    for line in _code_lines(text):
        if "sgp-imagenet" not in line:
            continue
        tokens = shlex.split(_substitute(line, text), comments=True)
        for i in range(len(tokens) - 1):
            if tokens[i : i + 2] == ["sgp-imagenet", "train"]:
                found.append(tokens[i + 1 :])
    return found


def _parse(argv: list[str], where: str) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: build_parser() rejects {shlex.join(argv)} (see stderr)")


def _train_options() -> set[str]:
    """Every option string of the ``train`` subcommand (argparse keeps them private)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices["train"]._option_string_actions)


# -- files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SCRIPTS)
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
    assert sorted(p.name for p in JOB_SCRIPTS.glob("*.sh")) == sorted(ALL_SCRIPTS)
    for name in ALL_SCRIPTS:
        assert f"`{name}`" in readme, f"README.md does not mention {name}"


# -- SLURM headers -------------------------------------------------------------------


@pytest.mark.parametrize("name", SLURM_SCRIPTS)
def test_sbatch_header(name: str) -> None:
    lines = _read(name).splitlines()
    options: dict[str, str | None] = {}
    first_command = next(
        i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")
    )
    for i, line in enumerate(lines):
        if not line.startswith("#SBATCH"):
            assert "#SBATCH" not in line.lstrip()[:8], f"{name}:{i + 1}: indented #SBATCH"
            continue
        # sbatch stops reading #SBATCH lines at the first command
        assert i < first_command, f"{name}:{i + 1}: #SBATCH after the first command"
        match = _SBATCH_LINE.fullmatch(line)
        assert match, f"{name}:{i + 1}: malformed (want '#SBATCH --option[=value]'): {line!r}"
        assert match.group(1) not in options, f"{name}: --{match.group(1)} given twice"
        options[match.group(1)] = match.group(2)
    for required in ("job-name", "nodes", "ntasks-per-node", "gres", "cpus-per-task", "time"):
        assert options.get(required), f"{name}: no '#SBATCH --{required}=...'"
    assert "requeue" in options and options["requeue"] is None, f"{name}: no #SBATCH --requeue"
    assert "no-requeue" not in options
    # no "B:": the signal must reach the srun tasks, which checkpoint; not the batch shell
    assert re.fullmatch(r"USR1@\d+", options.get("signal") or ""), (
        f"{name}: want '#SBATCH --signal=USR1@SECONDS', got {options.get('signal')!r}"
    )
    assert options.get("open-mode") == "append", f"{name}: a requeue would truncate the log"
    assert options.get("output"), f"{name}: no #SBATCH --output"
    gpus = re.fullmatch(r"gpu(?::[\w-]+)?:(\d+)", options["gres"] or "")
    assert gpus, f"{name}: --gres={options['gres']} is not gpu:N"
    assert gpus.group(1) == options["ntasks-per-node"], f"{name}: one task per GPU"
    assert options["job-name"] == f"{_algorithm(name)}-{_network(name)}"


@pytest.mark.parametrize("name", SLURM_SCRIPTS)
def test_network_settings(name: str) -> None:
    code = _code_lines(_read(name))
    exports = "\n".join(ln for ln in code if ln.lstrip().startswith("export"))
    if _network(name) == "ethernet":
        assert re.search(r"^export NCCL_IB_DISABLE=1$", exports, re.MULTILINE), name
        assert "NCCL_SOCKET_IFNAME=" in exports and "GLOO_SOCKET_IFNAME=" in exports, name
    else:
        assert re.search(r"^export NCCL_IB_DISABLE=0$", exports, re.MULTILINE), name
        assert not any("NCCL_IB_DISABLE=1" in ln for ln in code), f"{name} disables IB"
        assert "NCCL_IB_HCA" in _read(name), f"{name}: no NCCL_IB_HCA example"


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_script_never_requeues_itself(name: str) -> None:
    # the application runs `scontrol requeue` after its checkpoint; twice would be wrong
    assert not any("scontrol" in ln for ln in _code_lines(_read(name))), name


# -- the training command, read statically -------------------------------------------


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_train_command_parses(name: str) -> None:
    text = _read(name)
    invocations = _train_invocations(text)
    assert len(invocations) == 1, f"{name}: want one 'sgp-imagenet train', got {invocations}"
    argv = invocations[0]
    known = _train_options()
    for token in argv:
        if token.startswith("--"):  # whole names only: argparse would accept abbreviations
            assert token.split("=")[0] in known, f"{name}: {token} is not a train option"
    args = _parse(argv, name)
    assert args.command == "train"
    # paths are parameters: they come from shell variables, never literals
    assert args.data == "__DATA__", f"{name}: --data {args.data}"
    assert args.checkpoint_dir == "__CKPT__", f"{name}: --checkpoint-dir {args.checkpoint_dir}"
    assert args.log_dir == "__LOG_DIR__", f"{name}: --log-dir {args.log_dir}"
    assert args.resume == "auto"
    assert args.checkpoint_every > 0
    # the paper's ResNet-50 settings
    assert (args.arch, args.batch_size, args.lr, args.epochs) == ("resnet50", 32, 0.1, 90)
    assert (args.momentum, args.nesterov, args.weight_decay) == (0.9, True, 1e-4)
    assert (args.lr_schedule, args.warmup_epochs) == ("30:0.1 60:0.1 80:0.1", 5.0)
    assert (args.amp, args.channels_last) == ("bf16", True)
    if name == TORCHRUN:
        assert args.algorithm == "sgp"  # ALGORITHM's default
        assert args.requeue is False  # no SLURM job to requeue
        return
    algorithm = _algorithm(name)
    assert args.algorithm == algorithm, f"{name} runs --algorithm {args.algorithm}"
    assert args.requeue is True
    assert args.checkpoint_all is (algorithm in GOSSIP)
    assert args.synch_freq == (1 if algorithm == "osgp" else 0)
    assert args.nprocs_per_node == 1
    if algorithm in ("sgp", "osgp", "dpsgd"):
        assert args.topology == "npeer-dynamic-directed-exponential"
        assert args.peers_per_itr_schedule == "0:1"
    else:
        assert args.topology is None  # AR has none; AD-PSGD keeps its bipartite default


@pytest.mark.parametrize("name", ALL_SCRIPTS)
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


# -- the training command, from a dry run ----------------------------------------------


def _stubs(tmp_path: Path) -> Path:
    """``srun``, ``torchrun`` and ``sgp-imagenet`` that record their arguments and
    environment under ``$STUB_OUT``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = '#!/bin/bash\nprintf "%s\\0" "$@" > "$STUB_OUT/argv"\nenv -0 > "$STUB_OUT/env"\n'
    for tool, body in (("srun", record), ("torchrun", record), ("sgp-imagenet", "#!/bin/bash\n")):
        (bin_dir / tool).write_text(body)
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def _dry_run(
    name: str, tmp_path: Path, env: dict[str, str], *script_args: str
) -> tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]]:
    """Run the script with stubs; returns the result, the stub's argv and environment."""
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
        [_BASH, str(JOB_SCRIPTS / name), *script_args],
        cwd=tmp_path,
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


def _slurm_env(tmp_path: Path, name: str) -> dict[str, str]:
    return {
        "DATA": str(tmp_path / "imagenet"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": f"{_algorithm(name)}-{_network(name)}",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_CPUS_PER_TASK": "10",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS": "32",
        "SLURM_JOB_NODELIST": "gpu[01-04]",
    }


@needs_bash
@pytest.mark.parametrize("name", SLURM_SCRIPTS)
def test_slurm_dry_run(name: str, tmp_path: Path) -> None:
    result, argv, env = _dry_run(name, tmp_path, _slurm_env(tmp_path, name), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert argv[: argv.index("sgp-imagenet")] == ["--kill-on-bad-exit=1"]
    args = _parse(argv[argv.index("sgp-imagenet") + 1 :], name)
    assert args.algorithm == _algorithm(name)
    assert args.epochs == 1  # the script's own arguments are appended
    assert args.data == str(tmp_path / "imagenet")
    # keyed on the job id, which a requeued job keeps: it finds its checkpoints again
    run = f"{_algorithm(name)}-{_network(name)}-4242"
    assert args.checkpoint_dir == str(tmp_path / "checkpoints" / run)
    assert args.log_dir == str(tmp_path / "logs" / run)
    assert Path(args.checkpoint_dir).is_dir() and Path(args.log_dir).is_dir()
    assert env["SRUN_CPUS_PER_TASK"] == "10"
    assert env["NCCL_IB_DISABLE"] == ("1" if _network(name) == "ethernet" else "0")
    if _network(name) == "ethernet":
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"


@needs_bash
@pytest.mark.parametrize("name", [SLURM_SCRIPTS[0], TORCHRUN])
def test_dry_run_without_data_fails_before_launching(name: str, tmp_path: Path) -> None:
    env = _slurm_env(tmp_path, name) if name != TORCHRUN else {}
    env.pop("DATA", None)
    result, argv, _ = _dry_run(name, tmp_path, env)
    assert result.returncode != 0
    assert "set DATA" in result.stderr
    assert argv == []


@needs_bash
def test_slurm_dry_run_honours_ckpt(tmp_path: Path) -> None:
    name = "slurm_sgp_infiniband.sh"
    env = {**_slurm_env(tmp_path, name), "CKPT": str(tmp_path / "mine")}
    result, argv, _ = _dry_run(name, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert _parse(argv[argv.index("sgp-imagenet") + 1 :], name).checkpoint_dir == env["CKPT"]


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
def test_torchrun_dry_run(rendezvous: dict[str, str], expected: list[str], tmp_path: Path) -> None:
    env = {"DATA": str(tmp_path / "imagenet"), "ALGORITHM": "osgp", **rendezvous}
    result, argv, _ = _dry_run(TORCHRUN, tmp_path, env, "--synch-freq", "1")
    assert result.returncode == 0, result.stderr
    launcher = argv[: argv.index("--no-python")]
    assert launcher == ["--nnodes=2", "--nproc-per-node=8", *expected]
    assert argv[argv.index("--no-python") + 1] == "sgp-imagenet"
    args = _parse(argv[argv.index("--no-python") + 2 :], TORCHRUN)
    assert (args.algorithm, args.synch_freq, args.requeue) == ("osgp", 1, False)
    assert args.checkpoint_dir == str(tmp_path / "checkpoints" / "sgp-imagenet-osgp")
