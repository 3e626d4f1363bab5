"""The single entry point for the gossip monorepo: tests, lint, types, docs, demo, benchmarks.

Sessions that need torch share one environment, ``.nox/dev``, built once and rebuilt only
when ``constraints/ci.txt`` or a package's ``pyproject.toml`` changes (the 5 GB torch
install is not repeated per session or per run). ``isolated`` sessions are separate on
purpose: they prove each package installs with only what it declares.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tomllib
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

ROOT = Path(__file__).resolve().parent
CONSTRAINTS = ROOT / "constraints" / "ci.txt"
# Dependency order: each package depends only on those before it.
PACKAGES = ["gossip-topology", "gossip-comm", "gossip-nn", "sgp-imagenet"]
DEV_TOOLS = [
    "scikit-learn",
    "torch",
    "torchvision",
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "matplotlib",
    "tensorboard",
    "tqdm",
    "lightning",  # gossip_nn.lightning: its tests and typecheck
    "mypy",
    "ruff",
    # repository checks (tests/): build each package, twine check, workflow YAML
    "hatchling",
    "twine",
    "pyyaml",
    "griffelib",  # the docs' API checks, run as tests (tests/test_api_docs.py)
]
DOCS_TOOLS = ["mkdocs", "mkdocs-material", "mkdocstrings[python]", "mkdocs-glightbox", "ruff"]
BROWSER_TOOLS = ["playwright"]
DEV_ENV = ROOT / ".nox" / "dev"


def _pkg(name: str) -> Path:
    return ROOT / "packages" / name


def _dev_stamp() -> str:
    h = hashlib.sha256(CONSTRAINTS.read_bytes())
    h.update(" ".join(DEV_TOOLS).encode())
    for name in PACKAGES:
        h.update((_pkg(name) / "pyproject.toml").read_bytes())
    return h.hexdigest()


def _dev_python(session: nox.Session) -> str:
    """Create or reuse ``.nox/dev``: torch, the tools and every package, editable."""
    python = DEV_ENV / "bin" / "python"
    stamp_file = DEV_ENV / ".gossip-stamp"
    stamp = _dev_stamp()
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        session.log(f"Reusing {DEV_ENV} (up to date with constraints and pyproject files)")
        return str(python)
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(DEV_ENV), external=True)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "-c",
        str(CONSTRAINTS),
    ]
    session.run(*pip, *DEV_TOOLS, external=True)
    editable = [arg for name in PACKAGES for arg in ("-e", str(_pkg(name)))]
    session.run(*pip, *editable, external=True)
    stamp_file.write_text(stamp)
    return str(python)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the repository checks (``tests/``) and every package's test suite together.

    The 15 slowest tests are listed at the end, to keep the suite under its 15 minutes.
    """
    python = _dev_python(session)
    args = _and_marker(session.posargs or ["--durations=15"], "not faults and not tutorials")
    session.run(python, "-m", "pytest", *_suites(), *args, external=True)


def _suites() -> list[str]:
    return [str(ROOT / "tests")] + [str(_pkg(name) / "tests") for name in PACKAGES]


def _and_marker(args: list[str], marker: str) -> list[str]:
    """``args`` with ``-m marker`` added, or joined to the ``-m`` expression they hold."""
    if "-m" not in args:
        return ["-m", marker, *args]
    i = args.index("-m")
    return [*args[:i], "-m", f"({args[i + 1]}) and {marker}", *args[i + 2 :]]


@nox.session(venv_backend="none")
def faults(session: nox.Session) -> None:
    """Run the fault scenarios end to end (tests marked ``faults``; see docs/reliability.md).

    Each kills, corrupts or starves a real run, so each takes tens of seconds; CI runs
    them after ``tests``.
    """
    python = _dev_python(session)
    args = _and_marker(session.posargs or ["--durations=10"], "faults")
    session.run(python, "-m", "pytest", *_suites(), *args, external=True)


@nox.session(venv_backend="none")
def tutorials(session: nox.Session) -> None:
    """Run the tutorials that train for real at full size (tests marked ``tutorials``).

    Each takes a minute or more (the Lightning tutorial: six strategies on 4 CPU
    processes), so CI runs them after ``tests`` and ``faults``.
    """
    python = _dev_python(session)
    args = _and_marker(session.posargs or ["--durations=5"], "tutorials")
    session.run(python, "-m", "pytest", *_suites(), *args, external=True)


def _declared_siblings(name: str) -> list[str]:
    """Sibling packages ``name`` declares, transitively, in dependency order."""
    meta = tomllib.loads((_pkg(name) / "pyproject.toml").read_text())["project"]
    direct = {
        dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip()
        for dep in meta.get("dependencies", [])
    }
    found = set()
    for sib in direct & set(PACKAGES):
        found |= {sib, *_declared_siblings(sib)}
    return [p for p in PACKAGES if p in found]


@nox.session
@nox.parametrize("package", PACKAGES)
def isolated(session: nox.Session, package: str) -> None:
    """Install one package (not editable) with only its declared siblings; run its tests.

    gossip-nn is installed with its ``lightning`` extra too, so that the extra is shown
    to install from the repository and its tests run there.
    """
    local = [str(_pkg(s)) for s in _declared_siblings(package)]
    extras = "test,lightning" if package == "gossip-nn" else "test"
    session.install("-c", str(CONSTRAINTS), *local, f"{_pkg(package)}[{extras}]")
    if package == "gossip-topology":
        session.run(
            "python",
            "-c",
            "import importlib.util, sys; "
            "sys.exit('torch is installed' if importlib.util.find_spec('torch') else 0)",
        )
        session.log("Confirmed: no torch in this environment.")
    session.run("python", "-m", "pytest", str(_pkg(package) / "tests"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("-c", str(CONSTRAINTS), "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict on every package's src/."""
    python = _dev_python(session)
    srcs = [str(p) for name in PACKAGES for p in (_pkg(name) / "src").iterdir() if p.is_dir()]
    session.run(python, "-m", "mypy", "--strict", *srcs, external=True)


def _docs_python(session: nox.Session, *extra: str) -> str:
    """``.nox/dev`` with the docs tools added: the site documents the installed packages
    (the ``sgp-imagenet`` command's page is generated from its real parser, whose
    choices come from gossip-nn and torch-using modules)."""
    python = _dev_python(session)
    session.run(
        python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c",
        str(CONSTRAINTS), *DOCS_TOOLS, *extra, external=True,
    )  # fmt: skip
    return python


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site into ``site/`` with mkdocs --strict.

    The build fails on a broken link, a public name without a docstring, or a missing
    page. MathJax is fetched once from the npm registry (pinned, digest-checked) into
    ``.cache/`` and shipped with the site. ``nox -s docs -- serve`` serves it instead.
    """
    python = _docs_python(session)
    if session.posargs[:1] == ["serve"]:
        session.run(python, "-m", "mkdocs", "serve", *session.posargs[1:], external=True)
        return
    session.run(
        python, "-m", "mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"),
        external=True,
    )  # fmt: skip


@nox.session(venv_backend="none")
def docs_browser(session: nox.Session) -> None:
    """Build the site, serve it on 127.0.0.1 and check it in headless Chromium.

    Uses the system's Chromium (Debian: ``apt-get install -y chromium``) through
    Playwright's Python API; Playwright's own browser download is not needed. Checks the
    home page, a tutorial, the benchmarks, a concept page with math and the gossip-nn
    reference at 1280 px and 390 px: headings, typeset math, figures that enlarge on
    click, the search box, the 404 page (from any path, and from the folder), console
    errors.
    Screenshots and ``report.json`` go to ``site-check/``.
    """
    python = _docs_python(session, *BROWSER_TOOLS)
    site = ROOT / "site"
    session.run(python, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), external=True)
    session.run(
        python, str(ROOT / "docs" / "check" / "site_check.py"), "--site", str(site),
        "--out", str(ROOT / "site-check"), external=True,
    )  # fmt: skip


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The main job: train with all five algorithms through the real ``sgp-imagenet train``.

    Four local ranks on CPU (gloo, torchrun), scikit-learn's digits data set and a small
    CNN, a few epochs per algorithm; prints a table of accuracy (each rank's own model and
    the network average), wall time and time per iteration, and writes ``demo-results/``:
    logs, checkpoints, ``summary.md`` and ``demo.png`` (from ``sgp-imagenet plot``).
    ``nox -s demo -- --epochs 1`` passes extra flags to every training run.
    """
    python = _dev_python(session)
    script = str(Path(python).parent / "sgp-imagenet")
    out = ROOT / "demo-results"
    if out.exists():
        shutil.rmtree(out)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _demo import train_command  # the settings bench_demo.py chose

    listed = session.run(
        python, "-c", "from gossip_nn import ALGORITHMS; print(*ALGORITHMS)",
        silent=True, external=True,
    )  # fmt: skip
    runs = []
    for algorithm in str(listed).split():
        session.log(f"training with {algorithm} on 4 local ranks")
        run_dir = out / algorithm
        session.run(
            *train_command(python, script, algorithm, run_dir, extra=session.posargs),
            external=True,
        )
        runs.append(str(run_dir))
    session.run(
        script, "plot", *runs, "--out", str(out / "demo.png"), "--table",
        str(out / "summary.md"), external=True,
    )  # fmt: skip


@nox.session(venv_backend="none")
def tour(session: nox.Session) -> None:
    """Tour the topologies: schedules, spectral gaps, consensus speed and a plot."""
    python = _dev_python(session)
    out = ROOT / "demo-output"
    out.mkdir(exist_ok=True)
    session.run(
        python,
        "-m",
        "gossip_topology",
        "--world-size",
        "16",
        "--plot",
        str(out / "consensus.png"),
        *session.posargs,
        external=True,
    )


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py in turn; each writes JSON + markdown to results/.

    Arguments after ``--`` go to every benchmark: ``nox -s bench -- --quick`` is the
    small, fast smoke run for CI; without it each benchmark runs its full reference sizes.
    """
    python = _dev_python(session)
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.error("no benchmarks/bench_*.py found")
    for script in scripts:
        session.log(f"benchmark {script.name} {' '.join(session.posargs)}".rstrip())
        session.run(python, str(script), *session.posargs, external=True)


def _check_cluster_host(session: nox.Session) -> None:
    """The emulated cluster's needs: root (network namespaces, tc) and iproute2."""
    if os.geteuid() != 0:
        session.error("the emulated cluster needs root (ip netns, tc); run as root")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        session.error("the emulated cluster needs iproute2 (ip, tc): apt-get install iproute2")


@nox.session(venv_backend="none")
def cluster(session: nox.Session) -> None:
    """Training iterations on an emulated 4-host Ethernet cluster (needs root and iproute2).

    Builds network namespaces with 1 and 10 Gbit/s shaped links, runs every algorithm side
    by side at 4 hosts (with a straggler run and a chunk-size sweep), then at 2 hosts, then
    2 hosts of 2 processes (one model per node), then fits the scale model; writes
    ``benchmarks/results/cluster*`` and ``scale_model*`` (about 30 minutes).
    ``nox -s cluster -- --quick`` is a 2-host smoke run; any other arguments after ``--``
    go to ``benchmarks/cluster/bench_cluster.py`` alone.
    """
    _check_cluster_host(session)
    python = _dev_python(session)
    cluster_dir = ROOT / "benchmarks" / "cluster"
    script = cluster_dir / "bench_cluster.py"
    session.run(python, str(script), *session.posargs, external=True)
    if not session.posargs:  # the reference run: add the 2-host points and the model
        two_hosts = ["--hosts", "2", "--skip", "straggler", "chunks"]
        session.run(python, str(script), *two_hosts, external=True)
        session.run(python, str(cluster_dir / "bench_hierarchy.py"), external=True)
        session.run(python, str(cluster_dir / "scale_model.py"), external=True)


@nox.session(venv_backend="none", name="cluster_compression")
def cluster_compression(session: nox.Session) -> None:
    """Compressed gossip against DDP's compression hooks on the emulated 4-host cluster.

    Needs root and iproute2, as ``cluster``. At 1 and 10 Gbit/s: DDP plain, with the bf16
    hook and with PowerSGD; SGP and OSGP with each compressor, at batch 8 and 2, then in
    GPU-host mode; writes ``benchmarks/results/cluster_compression*`` (about 40 minutes
    on the 2-core reference machine). ``nox -s cluster_compression -- --quick`` is a
    2-host smoke run (about 8 minutes); ``-- --hosts 2 --batches --gpu-host S`` runs the
    GPU-host mode alone on 2 hosts, one core each, with the 4-host run's sleep ``S``
    (``benchmarks/results/cluster_compression_2hosts_gpu_host*``, about 5 minutes); other
    arguments after ``--`` go to ``benchmarks/cluster/bench_compression.py``.
    """
    _check_cluster_host(session)
    python = _dev_python(session)
    script = ROOT / "benchmarks" / "cluster" / "bench_compression.py"
    session.run(python, str(script), *session.posargs, external=True)


@nox.session(venv_backend="none", name="cluster_faults")
def cluster_faults(session: nox.Session) -> None:
    """A lost host and its replacement on the emulated 4-host cluster (root, iproute2).

    Fault-tolerant SGP on ResNet-50 at 1 Gbit/s: host 2's worker is killed mid-run and
    started again later, and joins. Reports the time to detect and to reconfigure, the
    survivors' throughput against the 4-host rate, the time for the replacement to
    join; then the same job without fault tolerance under one torchrun per host, killed
    the same way and restarted from its last checkpoint, for comparison. Writes
    ``benchmarks/results/cluster_faults.{json,md,png}`` (about 8 minutes). Arguments
    after ``--`` go to ``benchmarks/cluster/bench_faults.py``.
    """
    _check_cluster_host(session)
    python = _dev_python(session)
    script = ROOT / "benchmarks" / "cluster" / "bench_faults.py"
    session.run(python, str(script), *session.posargs, external=True)


@nox.session(venv_backend="none", name="cluster_network")
def cluster_network(session: nox.Session) -> None:
    """Training on a bad network: the emulated 4-host cluster (root, iproute2, a C compiler).

    Delay (10, 50 ms), jitter (10 +- 5 ms) and packet loss (0.1%, 1%) on one host's link
    and on every link, for AR-SGD, SGP, OSGP and AD-PSGD on ResNet-50: each one's
    slowdown against its clean-network time from the same run. Then ``sgp-imagenet
    train`` with one host's link cut for 5 s, below and above the gossip timeout, checked
    (it continues; every rank stops with the lost-rank line). nftables is installed with
    apt if missing. Writes ``benchmarks/results/cluster_network.{json,md,png}`` (about 35
    minutes). Arguments after ``--`` go to ``benchmarks/cluster/bench_network.py``.
    """
    _check_cluster_host(session)
    if shutil.which("cc") is None:
        session.error("the delay line needs a C compiler (cc): apt-get install gcc")
    python = _dev_python(session)
    script = ROOT / "benchmarks" / "cluster" / "bench_network.py"
    session.run(python, str(script), *session.posargs, external=True)


@nox.session(venv_backend="none", name="time_to_accuracy")
def time_to_accuracy(session: nox.Session) -> None:
    """Time to accuracy on the emulated 4-host cluster at 1 Gbit/s (the SGP paper's figure).

    Needs root and iproute2, as ``cluster``. Trains a wide MLP on digits to a fixed
    number of epochs with AR-SGD (DDP), DDP + PowerSGD, and SGP and OSGP with and without
    compression, recording the network-average model's test accuracy against training
    wall-clock time; writes ``benchmarks/results/time_to_accuracy.{json,md,png}``. About
    15 minutes per seed on the 2-core reference machine, 45 for the default three seeds;
    ``-- --seeds 0`` runs one, ``-- --resume`` adds missing runs to the saved ones, and
    ``-- --quick`` is a 2-host, 1-epoch smoke run of four configurations (about 2
    minutes). Arguments after ``--`` go to ``benchmarks/cluster/bench_time_to_accuracy.py``.
    """
    _check_cluster_host(session)
    python = _dev_python(session)
    script = ROOT / "benchmarks" / "cluster" / "bench_time_to_accuracy.py"
    session.run(python, str(script), *session.posargs, external=True)


@nox.session(venv_backend="none", name="adpsgd_pace")
def adpsgd_pace(session: nox.Session) -> None:
    """AD-PSGD's ranks at their own pace on the emulated 4-host cluster (root, iproute2).

    A 25 M-parameter linear model in GPU-host mode (a 0.25 s sleep for forward and
    backward), whose exchange takes longer than a step at 1 Gbit/s: every rank's median
    s/iter, uncompressed and with each compressor, at 1 and 10 Gbit/s; writes
    ``benchmarks/results/adpsgd_pace.{json,md,png}`` (about 4 minutes). ``-- --quick``
    runs 1 Gbit/s with two configurations.
    """
    _check_cluster_host(session)
    python = _dev_python(session)
    script = ROOT / "benchmarks" / "cluster" / "bench_adpsgd_pace.py"
    session.run(python, str(script), *session.posargs, external=True)


@nox.session(venv_backend="none", name="clean")
def clean(session: nox.Session) -> None:
    """Remove the shared dev environment and build outputs."""
    for path in (DEV_ENV, ROOT / "site", ROOT / "demo-output", ROOT / "demo-results"):
        if path.exists():
            session.log(f"removing {path}")
            shutil.rmtree(path)
