"""gossip-nn.

nn.Module wrappers for the five data-parallel algorithms: AR-SGD, SGP, OSGP,
D-PSGD and AD-PSGD.

Status: skeleton. The public API arrives with the issue that builds this package; until
then only `__version__` is exported.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("gossip-nn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
