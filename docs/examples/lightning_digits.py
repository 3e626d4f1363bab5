"""Train one LightningModule with DDP and with each gossip algorithm; compare accuracy.

scikit-learn's digits (8x8 images of handwritten digits), a small network, CPU
processes. Each run trains the same module from the same seed; only the strategy
changes. Run it from a clone (``pip install "packages/gossip-nn[lightning]"
scikit-learn`` with the siblings, as in the installation guide):

    python docs/examples/lightning_digits.py --strategy ddp sgp --devices 4

Lightning starts the processes itself. Rank 0 prints one line per strategy, and with
``--json FILE`` writes the results there.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from lightning import LightningModule, Trainer, seed_everything
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gossip_nn.lightning import GossipStrategy

STRATEGIES = ("ddp", "ar", "sgp", "osgp", "dpsgd", "adpsgd")


class LitDigits(LightningModule):
    """A two-layer network for 8x8 digits; nothing in it knows about gossip."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        # sync_dist: the mean over the ranks' shards (90 images each)
        self.log("test_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)
        self.log("test_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """Training and test sets: 1,437 and 360 images (360 = 90 per rank on 4 ranks)."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=360, random_state=0, stratify=y
    )
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    return train, DataLoader(TensorDataset(x_test, y_test), batch_size=90)


def train(name: str, devices: int, epochs: int, seed: int = 0) -> dict[str, float]:
    """Fit LitDigits with strategy ``name``; its test accuracy on the network average."""
    seed_everything(seed, verbose=False)
    strategy = "ddp" if name == "ddp" else GossipStrategy(name)
    trainer = Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=devices,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train_loader, test_loader = loaders()
    model = LitDigits()
    start = time.perf_counter()
    trainer.fit(model, train_loader)
    seconds = time.perf_counter() - start
    [result] = trainer.test(model, test_loader, verbose=False)
    return {"test_acc": result["test_acc"], "test_loss": result["test_loss"], "fit_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--devices", type=int, default=4, help="CPU processes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="model and data order")
    parser.add_argument("--json", help="write the results here (rank 0)")
    args = parser.parse_args()
    results = {}
    for name in args.strategy:
        results[name] = train(name, args.devices, args.epochs, args.seed)
        if int(torch.distributed.get_rank()) == 0:
            got = results[name]
            print(
                f"{name}: test accuracy {100 * got['test_acc']:.1f}%, loss {got['test_loss']:.4f} "
                f"(fit {got['fit_s']:.0f} s)"
            )
    if args.json and torch.distributed.get_rank() == 0:
        with open(args.json, "w") as f:
            json.dump({**vars(args), "results": results}, f)


if __name__ == "__main__":
    main()
