"""sgp-imagenet: train image classifiers with SGP and the other gossip algorithms.

The ``sgp-imagenet`` console script (``sgp_imagenet.cli:main``) runs one rank of a job
launched by torchrun or SLURM ``srun``: ``sgp-imagenet train --algorithm sgp --data
/path/to/imagenet``; ``sgp-imagenet env`` shows what the launcher set.
"""

from importlib.metadata import version as _version

from sgp_imagenet.cli import build_parser, main

__version__ = _version("sgp-imagenet")
"""The installed version of sgp-imagenet, from its package metadata."""

__all__ = ["__version__", "build_parser", "main"]
