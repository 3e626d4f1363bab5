"""Entry point for ``python -m gossip_topology``."""

from gossip_topology.report import main

raise SystemExit(main())
