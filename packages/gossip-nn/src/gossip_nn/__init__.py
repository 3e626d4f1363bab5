"""gossip-nn.

nn.Module wrappers for the five data-parallel algorithms: AR-SGD, SGP, OSGP,
D-PSGD and AD-PSGD.

Status: skeleton. The public API arrives with the issue that builds this package; until
then only `__version__` is exported.
"""

from importlib.metadata import version as _version

__version__ = _version("gossip-nn")

__all__ = ["__version__"]
