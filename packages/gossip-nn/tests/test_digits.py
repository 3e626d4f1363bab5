"""Real data: scikit-learn's bundled digits, a small MLP, 4 ranks, every algorithm vs AR-SGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import ALGORITHMS, make_data_parallel

EPOCHS = 20


def _digits(rank: int, n: int) -> dict[str, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=0, stratify=y
    )
    Xs = torch.tensor(X_tr[rank::n], dtype=torch.float32)
    ys = torch.tensor(y_tr[rank::n])
    Xt, yt = torch.tensor(X_te, dtype=torch.float32), torch.tensor(y_te)
    accuracy = {}
    for algorithm in ALGORITHMS:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        model = make_data_parallel(algorithm, net, opt)
        gen = torch.Generator().manual_seed(rank)
        criterion = nn.CrossEntropyLoss()
        for _ in range(EPOCHS):
            order = torch.randperm(len(Xs), generator=gen)
            for i in range(0, len(Xs) - 31, 32):
                batch = order[i : i + 32]
                criterion(model(Xs[batch]), ys[batch]).backward()
                opt.step()
                opt.zero_grad()
        model.close()  # AD-PSGD: wait until every active has finished its exchanges
        model.eval()
        with torch.no_grad(), model.average_for_eval():
            accuracy[algorithm] = float((model(Xt).argmax(1) == yt).float().mean())
    return accuracy


@pytest.mark.slow
def test_every_algorithm_reaches_all_reduce_accuracy_on_digits() -> None:
    pytest.importorskip("sklearn")
    results = run_distributed(_digits, 4, timeout=600)
    acc = results[0]
    assert all(r == acc for r in results)  # evaluated on the network average everywhere
    assert acc["ar"] > 0.9, acc
    for algorithm in ALGORITHMS:
        assert abs(acc[algorithm] - acc["ar"]) <= 0.015, acc
