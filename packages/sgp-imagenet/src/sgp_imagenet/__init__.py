"""sgp-imagenet: The ResNet-50 ImageNet application and its sgp-imagenet command.

Status: skeleton. The public API arrives with the issue that builds this package; until
then only `__version__` is exported.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("sgp-imagenet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
