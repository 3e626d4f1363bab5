"""gossip-comm: PushSum, PushPull and bilateral gossip over point-to-point torch.distributed.

Runs on gloo with CPU tensors and on NCCL with CUDA tensors from one code path. Every
step is one ``batch_isend_irecv``; no per-edge process groups, no collectives in the
steady state. Build a gossiper from a ``gossip_topology.Topology`` and a
[`GossipConfig`][gossip_comm.GossipConfig].
"""

from importlib.metadata import version as _version

from gossip_comm._backend import comm_device_for, resolve_group
from gossip_comm.async_bilateral import AsyncBilateral
from gossip_comm.average import gossip_average
from gossip_comm.bilateral import BilateralPushPull
from gossip_comm.compression import (
    COMPRESSION_SPECS,
    Cast,
    Compressor,
    EdgeState,
    Int8,
    LowRank,
    MessageSpec,
    Payload,
    TopK,
    common_references,
    make_compressor,
)
from gossip_comm.config import DEFAULT_CHUNK_BYTES, WIRE_DTYPES, GossipConfig
from gossip_comm.errors import (
    GossipError,
    GossipPeerError,
    GossipTimeoutError,
    MembershipError,
    NonFiniteError,
    PeerLostError,
    StoreLostError,
)
from gossip_comm.flat import FlatBuffer
from gossip_comm.gossiper import Gossiper
from gossip_comm.handle import GossipHandle
from gossip_comm.membership import Membership
from gossip_comm.push_pull import PushPull
from gossip_comm.push_sum import OverlapRound, PushSum
from gossip_comm.settled import Settled

__version__ = _version("gossip-comm")
"""The installed version of gossip-comm, from its package metadata."""

__all__ = [
    "COMPRESSION_SPECS",
    "DEFAULT_CHUNK_BYTES",
    "WIRE_DTYPES",
    "AsyncBilateral",
    "BilateralPushPull",
    "Cast",
    "Compressor",
    "EdgeState",
    "FlatBuffer",
    "GossipConfig",
    "GossipError",
    "GossipHandle",
    "GossipPeerError",
    "GossipTimeoutError",
    "Gossiper",
    "Int8",
    "LowRank",
    "Membership",
    "MembershipError",
    "MessageSpec",
    "NonFiniteError",
    "OverlapRound",
    "Payload",
    "PeerLostError",
    "PushPull",
    "PushSum",
    "Settled",
    "StoreLostError",
    "TopK",
    "__version__",
    "comm_device_for",
    "common_references",
    "gossip_average",
    "make_compressor",
    "resolve_group",
]
