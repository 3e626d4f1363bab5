"""The 2019 command lines: every flag of the reference scripts and its ``sgp-imagenet`` form.

The code of *Stochastic Gradient Push for Distributed Deep Learning* (Assran, Loizou,
Ballas, Rabbat; ICML 2019, https://arxiv.org/abs/1811.10792) trained with two scripts:
``gossip_sgd.py`` (AR-SGD, SGP, OSGP and D-PSGD) and ``gossip_sgd_adpsgd.py`` (AD-PSGD).
[`LEGACY_FLAGS`][sgp_imagenet.legacy.LEGACY_FLAGS] lists each of their flags (the union
over the early, the apex-era and the later revisions of the scripts) with the
``sgp-imagenet train`` option that takes over its role, or the reason none does;
[`translate_2019`][sgp_imagenet.legacy.translate_2019] turns a 2019 command line into
``sgp-imagenet train`` arguments.

Three habits of the 2019 scripts shape the translation: booleans were the strings
``True`` and ``False``; which algorithm ran followed from a combination of flags
(``--all_reduce``, ``--push_sum``, ``--overlap``, or the script itself); and schedules were
flat lists (``--schedule 30 0.1 60 0.1``) where ``sgp-imagenet`` writes ``EPOCH:VALUE``
pairs (``--lr-schedule "30:0.1 60:0.1"``). Only flag names and meanings are used here.
"""

from __future__ import annotations

import math
import posixpath
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Literal, get_args

__all__ = ["LEGACY_FLAGS", "SCRIPTS", "LegacyFlag", "ValueKind", "translate_2019"]

ValueKind = Literal["bool", "int", "float", "str", "switch", "ints", "floats"]
"""What a 2019 flag took: the string ``True``/``False`` (``bool``), one number or string,
nothing (``switch``, a ``store_true`` flag), or a list of numbers (``ints``, ``floats``)."""

_SGP_SCRIPT = "gossip_sgd.py"
_ADPSGD_SCRIPT = "gossip_sgd_adpsgd.py"
SCRIPTS: tuple[str, ...] = (_SGP_SCRIPT, _ADPSGD_SCRIPT)
"""The two 2019 training scripts, in the order ``LEGACY_FLAGS`` lists them."""


@dataclass(frozen=True, kw_only=True)
class LegacyFlag:
    """One flag of a 2019 script and what ``sgp-imagenet train`` has instead.

    Attributes:
        script: The 2019 script, one of ``SCRIPTS``.
        flag: The 2019 flag, for example ``"--batch_size"``.
        value: What the flag took (see ``ValueKind``).
        equivalent: The ``sgp-imagenet train`` option or options (space-separated) that
            take over the flag's role, or ``None`` when none does.
        note: How values translate, or why there is no equivalent; says whether
            [`translate_2019`][sgp_imagenet.legacy.translate_2019] drops the flag or
            raises on it.
    """

    script: str
    flag: str
    value: ValueKind
    equivalent: str | None
    note: str


_VALUE_KINDS = frozenset(get_args(ValueKind))


def _load_flags() -> tuple[LegacyFlag, ...]:
    """``LEGACY_FLAGS`` from ``legacy_flags.toml``, the table this package ships."""
    text = resources.files("sgp_imagenet").joinpath("legacy_flags.toml").read_text("utf-8")
    specs = tomllib.loads(text)["flag"]
    for spec in specs:
        if not set(spec["scripts"]) <= set(SCRIPTS) or spec["value"] not in _VALUE_KINDS:
            raise RuntimeError(f"legacy_flags.toml: malformed entry {spec!r}")
    return tuple(
        LegacyFlag(
            script=script,
            flag=spec["flag"],
            value=spec["value"],
            equivalent=spec.get("equivalent"),
            note=spec["note"],
        )
        for script in SCRIPTS
        for spec in specs
        if script in spec["scripts"]
    )


LEGACY_FLAGS: tuple[LegacyFlag, ...] = _load_flags()
"""Every flag of ``gossip_sgd.py``, then of ``gossip_sgd_adpsgd.py``, over their revisions."""

_BY_SCRIPT: dict[str, dict[str, LegacyFlag]] = {
    script: {f.flag: f for f in LEGACY_FLAGS if f.script == script} for script in SCRIPTS
}

# the order of build_parser()'s train options, which translate_2019 writes in
_ORDER = (
    "--algorithm", "--topology", "--peers-per-itr-schedule", "--synch-freq",
    "--legacy-schedule", "--batch-size", "--lr", "--momentum", "--nesterov",
    "--weight-decay", "--epochs", "--lr-schedule", "--warmup-epochs", "--data", "--workers",
    "--max-iters-per-epoch", "--amp", "--seed", "--backend", "--checkpoint-dir", "--resume",
    "--checkpoint-all", "--log-dir", "--print-freq",
)  # fmt: skip

_Value = str | list[str] | bool


def _lookup(flag: str, script: str) -> LegacyFlag:
    """The table row for ``flag``, allowing unique prefixes as 2019's argparse did."""
    flags = _BY_SCRIPT[script]
    if flag in flags:
        return flags[flag]
    matches = [name for name in flags if name.startswith(flag)]
    if len(matches) == 1:
        return flags[matches[0]]
    if matches:
        raise ValueError(f"{flag}: ambiguous flag of {script}; could be {', '.join(matches)}")
    raise ValueError(f"{flag}: not a flag of the 2019 {script}")


def _is_option(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:
        float(token)  # a negative number is a value, as in argparse
    except ValueError:
        return True
    return False


def _parse(tokens: Sequence[str], script: str) -> dict[str, _Value]:
    """2019 tokens to ``{flag: value}``: a string, a list of strings, or True (a switch)."""
    values: dict[str, _Value] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            raise ValueError(f"{token}: not a 2019 flag (they all start with --)")
        name, eq, inline = token.partition("=")
        row = _lookup(name, script)
        flag = row.flag
        if row.value == "switch":
            if eq:
                raise ValueError(f"{flag}: takes no value; got {token!r}")
            values[flag] = True
        elif row.value in ("ints", "floats"):
            items = inline.split() if eq else []
            while i < len(tokens) and not _is_option(tokens[i]):
                items.extend(tokens[i].split())
                i += 1
            if not items:
                raise ValueError(f"{flag}: expected a list of numbers")
            values[flag] = items
        elif eq:
            values[flag] = inline
        elif i < len(tokens) and not _is_option(tokens[i]):
            values[flag] = tokens[i]
            i += 1
        else:
            raise ValueError(f"{flag}: expected a value")
    return values


def _bool(flag: str, text: _Value) -> bool:
    if text in ("True", "False"):
        return text == "True"
    raise ValueError(
        f"{flag}: 2019 booleans are the strings True or False (the script read anything "
        f"else as False); got {text!r}"
    )


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag}: expected an integer; got {text!r}") from None


def _float(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{flag}: expected a number; got {text!r}") from None


def _check_kinds(values: dict[str, _Value], script: str) -> None:
    """Check every value against its flag's kind, dropped flags included (typos raise)."""
    for flag, value in values.items():
        kind = _BY_SCRIPT[script][flag].value
        if kind == "bool":
            _bool(flag, value)
        elif kind in ("int", "float"):
            (_int if kind == "int" else _float)(flag, str(value))
        elif kind in ("ints", "floats"):
            assert isinstance(value, list)
            for item in value:
                (_int if kind == "ints" else _float)(flag, item)
            if len(value) % 2:
                raise ValueError(f"{flag}: expected EPOCH VALUE pairs; got {len(value)} numbers")


def _pairs(items: _Value) -> list[tuple[float, str]]:
    """A flat, checked 2019 list as sorted (epoch, value text); later duplicates win."""
    assert isinstance(items, list)
    return sorted(dict(zip(map(float, items[::2]), items[1::2], strict=True)).items())


def _lr_schedule(items: _Value) -> str:
    # 2019 multiplied in every factor whose epoch e satisfies epoch >= e (epoch an int):
    # from the first integer epoch >= e, so fractional epochs round up, negative ones to 0
    decays: dict[int, str] = {}
    for epoch, factor in _pairs(items):
        key = max(0, math.ceil(epoch))
        decays[key] = repr(float(decays[key]) * float(factor)) if key in decays else factor
    return " ".join(f"{epoch}:{factor}" for epoch, factor in decays.items())


def _peers_schedule(items: _Value) -> dict[int, int]:
    flag = "--peers_per_itr_schedule"
    peers = {int(epoch): int(count) for epoch, count in _pairs(items)}
    if min(peers) < 0 or min(peers.values()) < 1:
        raise ValueError(f"{flag}: epochs must be >= 0 and peer counts >= 1; got {items}")
    if 0 not in peers:
        raise ValueError(f"{flag}: must give the count at epoch 0 (2019 required it)")
    return peers


def _flag(values: dict[str, _Value], flag: str, default: str) -> bool:
    """A checked 2019 boolean, or its default when absent."""
    return values.get(flag, default) == "True"


def _algorithm(values: dict[str, _Value], script: str) -> str:
    if script == _ADPSGD_SCRIPT:
        if _flag(values, "--all_reduce", "False"):
            raise ValueError(
                "--all_reduce: True has no AD-PSGD equivalent; translate the command as "
                "gossip_sgd.py for AR-SGD"
            )
        if not _flag(values, "--bilat", "True"):
            raise ValueError(
                "--bilat: False has no equivalent in gossip_sgd_adpsgd.py, which trains "
                "AD-PSGD only; translate the command as gossip_sgd.py for other algorithms"
            )
        return "adpsgd"
    if _flag(values, "--all_reduce", "False"):
        return "ar"
    overlap = _flag(values, "--overlap", "False")
    if _flag(values, "--push_sum", "True"):
        return "osgp" if overlap else "sgp"
    if overlap:
        raise ValueError(
            "--overlap: True with --push_sum False (overlapped D-PSGD) has no equivalent; "
            "use --push_sum True for OSGP"
        )
    return "dpsgd"


def _topology(values: dict[str, _Value], script: str, algorithm: str, exact: bool) -> list[str]:
    flag = "--graph_type"
    if algorithm == "ar":
        return []
    if flag not in values:
        if script == _ADPSGD_SCRIPT and exact:
            raise ValueError(
                f"{flag}: the AD-PSGD script's default graph 0 is not bipartite, which "
                "sgp-imagenet's AD-PSGD needs; give --graph_type 1 or 3 (or exact=False)"
            )
        return []
    graph = int(str(values[flag]))
    if graph == -1:
        raise ValueError(f"{flag}: -1 (no graph) has no equivalent for {algorithm}")
    if graph not in range(6):
        raise ValueError(f"{flag}: 2019 graph ids are -1 and 0-5; got {graph}")
    if script == _ADPSGD_SCRIPT and graph not in (1, 3):
        raise ValueError(
            f"{flag}: graph {graph} is not bipartite; sgp-imagenet's AD-PSGD needs 1 or 3"
        )
    return ["--topology", str(graph)]


def _check_dropped(values: dict[str, _Value], script: str, algorithm: str) -> None:
    """Raise for values of flags without an equivalent that would change the run."""
    if not _flag(values, "--distributed", "True"):
        raise ValueError(
            "--distributed: False (one process, no communication) has no flag equivalent; "
            "launch a single process (torchrun --nproc-per-node 1) instead"
        )
    if int(str(values.get("--resume_epoch", 0))) != 0:
        raise ValueError(
            "--resume_epoch: has no equivalent; pass --resume PATH with that epoch's checkpoint"
        )
    mixing = int(str(values.get("--mixing_strategy", 0)))
    if algorithm != "ar" and mixing not in ((0, -1) if script == _SGP_SCRIPT else (0,)):
        raise ValueError(
            f"--mixing_strategy: {mixing} has no equivalent; uniform mixing (0) is the one "
            "2019 strategy, and what sgp-imagenet does"
        )
    if script == _ADPSGD_SCRIPT and "--peers_per_itr_schedule" in values:
        first = _peers_schedule(values["--peers_per_itr_schedule"])[0]
        if first != 1:
            raise ValueError(
                f"--peers_per_itr_schedule: {first} peers per step has no equivalent; "
                "sgp-imagenet's AD-PSGD talks to one peer per step"
            )
    synch = int(str(values.get("--synch_freq", 0)))
    if synch and algorithm in ("sgp", "dpsgd") and script == _SGP_SCRIPT:
        raise ValueError(
            f"--synch_freq: {synch} without --overlap True has no equivalent (2019 then let "
            f"{algorithm} skip waiting for gossip for up to {synch} steps); sgp-imagenet "
            "bounds staleness for osgp only"
        )
    backend = values.get("--backend", "nccl")
    if backend not in ("nccl", "gloo", "tcp", "mpi"):
        raise ValueError(f"--backend: 2019 knew nccl, gloo, tcp and mpi; got {backend!r}")


# (2019 flag, sgp-imagenet option) whose values carry over unchanged
_SAME_VALUE = (
    ("--batch_size", "--batch-size"), ("--lr", "--lr"), ("--momentum", "--momentum"),
    ("--weight_decay", "--weight-decay"), ("--num_epochs", "--epochs"),
    ("--dataset_dir", "--data"), ("--num_dataloader_workers", "--workers"),
    ("--seed", "--seed"), ("--print_freq", "--print-freq"),
)  # fmt: skip

# the 2019 defaults that change the run where sgp-imagenet's differ (the batch no longer
# does, since 0.1.0, but a translated line still states the batch it reproduces)
_EXACT_PINS = {
    "--batch-size": ["--batch-size", "32"],
    "--nesterov": ["--no-nesterov"],
    "--warmup-epochs": ["--warmup-epochs", "0"],
    "--seed": ["--seed", "47"],
    "--checkpoint-all": ["--checkpoint-all"],
}


def translate_2019(
    argv: Sequence[str], script: str = "gossip_sgd.py", *, exact: bool = True
) -> list[str]:
    """Turn a 2019 ``gossip_sgd.py`` or ``gossip_sgd_adpsgd.py`` command line into
    ``sgp-imagenet train`` arguments.

    Flags are read as the 2019 scripts read them: ``--flag value`` or ``--flag=value``,
    unique prefixes of a flag, lists for ``--schedule`` and ``--peers_per_itr_schedule``,
    and booleans as the strings ``True``/``False``. Flags that only tuned the 2019
    machinery (``--master_port``, ``--verbose``, ``--network_interface_type``, ...) are
    dropped silently; each one's note in ``LEGACY_FLAGS`` says so.

    Args:
        argv: The 2019 arguments. Anything up to and including a token naming one of the
            scripts (``srun python -u gossip_sgd.py``) is skipped, and that script is used.
        script: The script the arguments were for, one of ``SCRIPTS`` (a path ending in
            one is accepted).
        exact: Reproduce the 2019 run: also write the 2019 defaults the run depends on
            (``--batch-size 32``, which is sgp-imagenet's default too, ``--no-nesterov``,
            ``--warmup-epochs 0``, ``--seed 47``, ``--checkpoint-all``, which differ from
            sgp-imagenet's) and ask for the 2019 peer schedule
            (``--legacy-schedule``) for the gossip algorithms. When false, only the flags
            given are translated.

    Returns:
        The arguments to put after ``sgp-imagenet train``, in the order of its ``--help``.

    Raises:
        ValueError: For an unknown script or flag, a malformed value, or a setting with
            no equivalent that would change the run; the message starts with the flag.

    Examples:
        >>> translate_2019(["--push_sum", "True", "--overlap=True", "--synch_freq", "2",
        ...                 "--schedule", "30", "0.1", "60", "0.1"], exact=False)
        ['--algorithm', 'osgp', '--synch-freq', '2', '--lr-schedule', '30:0.1 60:0.1']
    """
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if PurePath(token).name in SCRIPTS:
            script, tokens = token, tokens[i + 1 :]
            break
    script = PurePath(script).name
    if script not in SCRIPTS:
        raise ValueError(f"script: expected one of {', '.join(SCRIPTS)}; got {script!r}")
    values = _parse(tokens, script)
    _check_kinds(values, script)
    algorithm = _algorithm(values, script)
    _check_dropped(values, script, algorithm)

    out: dict[str, list[str]] = {"--algorithm": ["--algorithm", algorithm]}
    out["--topology"] = _topology(values, script, algorithm, exact)
    if algorithm != "adpsgd" and algorithm != "ar" and "--peers_per_itr_schedule" in values:
        peers = _peers_schedule(values["--peers_per_itr_schedule"])
        pairs = " ".join(f"{epoch}:{count}" for epoch, count in peers.items())
        out["--peers-per-itr-schedule"] = ["--peers-per-itr-schedule", pairs]
    if algorithm == "osgp" and "--synch_freq" in values:
        out["--synch-freq"] = ["--synch-freq", str(int(str(values["--synch_freq"])))]
    if exact and algorithm != "ar":
        out["--legacy-schedule"] = ["--legacy-schedule"]
    for old, new in _SAME_VALUE:
        if old in values:
            out[new] = [new, str(values[old])]
    if "--nesterov" in values:
        out["--nesterov"] = ["--nesterov" if _flag(values, "--nesterov", "") else "--no-nesterov"]
    if "--schedule" in values:
        out["--lr-schedule"] = ["--lr-schedule", _lr_schedule(values["--schedule"])]
    if "--warmup" in values:
        out["--warmup-epochs"] = ["--warmup-epochs", "5" if _flag(values, "--warmup", "") else "0"]
    cap = int(str(values.get("--num_iterations_per_training_epoch", 0)))
    if cap >= 1:
        out["--max-iters-per-epoch"] = ["--max-iters-per-epoch", str(cap)]
    if values.get("--fp16"):
        out["--amp"] = ["--amp", "fp16"]
    backend = values.get("--backend")
    if backend in ("nccl", "gloo", "tcp"):  # mpi: no such launcher; auto picks nccl on GPUs
        out["--backend"] = ["--backend", "gloo" if backend == "tcp" else str(backend)]
    if "--checkpoint_dir" in values:
        directory = str(values["--checkpoint_dir"])
        tag = str(values.get("--tag", ""))
        directory = posixpath.join(directory, tag) if tag else directory
        out["--checkpoint-dir"] = ["--checkpoint-dir", directory]
        out["--log-dir"] = ["--log-dir", directory]
    if _flag(values, "--resume", "False"):
        out["--resume"] = ["--resume", "auto"]
    if "--checkpoint_all" in values:
        out["--checkpoint-all"] = (
            ["--checkpoint-all"] if _flag(values, "--checkpoint_all", "") else []
        )
    if exact:
        for option, tokens_ in _EXACT_PINS.items():
            out.setdefault(option, tokens_)
    return [token for option in _ORDER for token in out.get(option, [])]
