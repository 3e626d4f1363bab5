"""gossip-topology: who talks to whom in gossip-based distributed learning.

Pure numpy: graphs, mixing matrices, spectral analysis and an ``n``-node simulator that
serves as the oracle for the communication and training packages. It never imports torch.
"""

from importlib.metadata import version as _version

from gossip_topology.compress import (
    COMPRESSOR_NAMES,
    Cast,
    Compressor,
    Int8,
    LowRank,
    Payload,
    TopK,
    parse_compressor,
)
from gossip_topology.graphs import (
    Complete,
    EvenOddExponential,
    FromAdjacency,
    Hypercube,
    OnePeerExponential,
    Star,
    StaticExponential,
    StaticTopology,
    Torus2D,
)
from gossip_topology.membership import (
    FALLBACK_TOPOLOGY,
    Generation,
    TopologyFallbackWarning,
    carry_over,
    topology_at,
)
from gossip_topology.mixing import (
    CustomMixing,
    MetropolisHastings,
    Mixing,
    UniformMixing,
    check_doubly_stochastic,
    is_column_stochastic,
    is_doubly_stochastic,
    mixing_matrix,
    schedule_period,
)
from gossip_topology.objectives import Quadratic
from gossip_topology.outer import (
    LocalSGDTrace,
    OuterOptimizer,
    fragment_offsets,
    outer_step,
    simulate_local_sgd,
    split_fragments,
)
from gossip_topology.phone_book import (
    DynamicBipartiteExponential,
    DynamicBipartiteLinear,
    DynamicDirectedExponential,
    DynamicDirectedLinear,
    NPeerDynamicDirectedExponential,
    PhoneBookTopology,
    Ring,
)
from gossip_topology.registry import LEGACY_IDS, TOPOLOGY_NAMES, make_topology
from gossip_topology.report import consensus_curve
from gossip_topology.schedule import RankSchedule, RankStep
from gossip_topology.simulate import GossipTrace, simulate_push_pull, simulate_push_sum
from gossip_topology.simulate_compressed import (
    CompressedTrace,
    simulate_compressed_push_pull,
    simulate_compressed_push_sum,
)
from gossip_topology.simulate_faults import GenerationOutcome, RankRecord, simulate_generation
from gossip_topology.spectral import (
    consensus_error,
    is_exact_averaging,
    is_strongly_connected,
    period_product,
    rounds_to_consensus,
    second_singular_value,
    spectral_gap,
)
from gossip_topology.topology import Topology

__version__ = _version("gossip-topology")
"""The installed version of gossip-topology, from its package metadata."""

__all__ = [
    "COMPRESSOR_NAMES",
    "FALLBACK_TOPOLOGY",
    "LEGACY_IDS",
    "TOPOLOGY_NAMES",
    "Cast",
    "Complete",
    "CompressedTrace",
    "Compressor",
    "CustomMixing",
    "DynamicBipartiteExponential",
    "DynamicBipartiteLinear",
    "DynamicDirectedExponential",
    "DynamicDirectedLinear",
    "EvenOddExponential",
    "FromAdjacency",
    "Generation",
    "GenerationOutcome",
    "GossipTrace",
    "Hypercube",
    "Int8",
    "LocalSGDTrace",
    "LowRank",
    "MetropolisHastings",
    "Mixing",
    "NPeerDynamicDirectedExponential",
    "OnePeerExponential",
    "OuterOptimizer",
    "Payload",
    "PhoneBookTopology",
    "Quadratic",
    "RankRecord",
    "RankSchedule",
    "RankStep",
    "Ring",
    "Star",
    "StaticExponential",
    "StaticTopology",
    "TopK",
    "Topology",
    "TopologyFallbackWarning",
    "Torus2D",
    "UniformMixing",
    "__version__",
    "carry_over",
    "check_doubly_stochastic",
    "consensus_curve",
    "consensus_error",
    "fragment_offsets",
    "is_column_stochastic",
    "is_doubly_stochastic",
    "is_exact_averaging",
    "is_strongly_connected",
    "make_topology",
    "mixing_matrix",
    "outer_step",
    "parse_compressor",
    "period_product",
    "rounds_to_consensus",
    "schedule_period",
    "second_singular_value",
    "simulate_compressed_push_pull",
    "simulate_compressed_push_sum",
    "simulate_generation",
    "simulate_local_sgd",
    "simulate_push_pull",
    "simulate_push_sum",
    "spectral_gap",
    "split_fragments",
    "topology_at",
]
