"""A PyTorch Lightning strategy that trains with gossip: ``GossipStrategy``.

Install gossip-nn with its ``lightning`` extra (from a clone: ``pip install
"packages/gossip-nn[lightning]"`` with its siblings). This module imports ``lightning``;
``import gossip_nn`` does not, so import this module explicitly:

```python
from lightning import Trainer
from gossip_nn.lightning import GossipStrategy

trainer = Trainer(strategy=GossipStrategy("osgp", topology="ring"), accelerator="cpu", devices=2)
```

The strategy is Lightning's DDP strategy (processes, launcher, process group,
``reduce``, ``barrier``) with the model wrapped by
[`make_data_parallel`][gossip_nn.make_data_parallel] instead of
`DistributedDataParallel`; see Lightning's
[Strategy documentation](https://lightning.ai/docs/pytorch/stable/extensions/strategy.html)
for what a strategy does. The algorithms are those of Stochastic Gradient Push
([Assran et al., 2019, arXiv:1811.10792](https://arxiv.org/abs/1811.10792)).
"""

from gossip_nn.lightning._checkpoints import rank_checkpoint_path
from gossip_nn.lightning._membership import MembershipEnvironment
from gossip_nn.lightning._strategy import EVAL_MODELS, GossipStrategy

__all__ = ["EVAL_MODELS", "GossipStrategy", "MembershipEnvironment", "rank_checkpoint_path"]
