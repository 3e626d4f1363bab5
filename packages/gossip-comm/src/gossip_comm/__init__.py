"""gossip-comm.

Point-to-point gossip communication (PushSum, PushPull, bilateral) over
torch.distributed, on gloo/CPU and NCCL/CUDA from one code path.

Status: skeleton. The public API arrives with the issue that builds this package; until
then only `__version__` is exported.
"""

from importlib.metadata import version as _version

__version__ = _version("gossip-comm")

__all__ = ["__version__"]
