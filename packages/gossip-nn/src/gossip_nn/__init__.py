"""gossip-nn: data-parallel training by gossip, behind the plain PyTorch training loop.

``make_data_parallel(algorithm, module, optimizer, **options)`` wraps a model for AR-SGD
(``"ar"``), SGP (``"sgp"``), overlapped SGP (``"osgp"``), D-PSGD (``"dpsgd"``) or
AD-PSGD (``"adpsgd"``). Gossip
runs inside the optimizer's step hooks, so ``loss.backward(); optimizer.step()`` is all a
training loop needs; ``"adpsgd"`` runs asynchronous pairwise gossip (call ``close()``
at the end).
"""

from importlib.metadata import version as _version

from gossip_nn._base import DataParallelModule
from gossip_nn.adpsgd import ADPSGD_TOPOLOGY, BilateralGossipDataParallel
from gossip_nn.allreduce import AllReduceDataParallel
from gossip_nn.averaging import ExactAveragingSchedule
from gossip_nn.factory import (
    ALGORITHMS,
    SET_TOPOLOGY_ALGORITHMS,
    gossip_options,
    make_data_parallel,
)
from gossip_nn.fault_tolerance import FaultTolerance, GenerationChange
from gossip_nn.gossip import GossipDataParallel
from gossip_nn.localsgd import OUTER_ALGORITHMS, LocalSGDDataParallel
from gossip_nn.options import (
    AVERAGE_BY,
    BUFFER_MODES,
    DPSGD_ORDERS,
    FAULT_TOLERANT_ALGORITHMS,
    GossipOptions,
)
from gossip_nn.progress import GlobalProgress
from gossip_nn.slowmo import SlowMoOptions
from gossip_nn.validate import check_same_setup

__version__ = _version("gossip-nn")
"""The installed version of gossip-nn, from its package metadata."""

__all__ = [
    "ADPSGD_TOPOLOGY",
    "ALGORITHMS",
    "AVERAGE_BY",
    "BUFFER_MODES",
    "DPSGD_ORDERS",
    "FAULT_TOLERANT_ALGORITHMS",
    "OUTER_ALGORITHMS",
    "SET_TOPOLOGY_ALGORITHMS",
    "AllReduceDataParallel",
    "BilateralGossipDataParallel",
    "DataParallelModule",
    "ExactAveragingSchedule",
    "FaultTolerance",
    "GenerationChange",
    "GlobalProgress",
    "GossipDataParallel",
    "GossipOptions",
    "LocalSGDDataParallel",
    "SlowMoOptions",
    "__version__",
    "check_same_setup",
    "gossip_options",
    "make_data_parallel",
]
