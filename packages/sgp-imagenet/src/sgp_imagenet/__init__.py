"""sgp-imagenet: The ResNet-50 ImageNet application and its sgp-imagenet command.

Status: skeleton. The public API arrives with the issue that builds this package; until
then only `__version__` is exported.
"""

from importlib.metadata import version as _version

__version__ = _version("sgp-imagenet")

__all__ = ["__version__"]
