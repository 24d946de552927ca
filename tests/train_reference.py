"""Single-process training with the same model, seed, split and global batch as a zcompute ``train`` job."""

from __future__ import annotations

import numpy as np


def train_single_process(x, y, model_spec: str, *, epochs: int, batch_size: int, lr: float, momentum: float = 0.0,
                         seed: int = 0, test_fraction: float = 0.2) -> float:
    """Test accuracy of plain torch SGD on the same held-out split the head uses."""
    import torch

    from common.tasks.torchmodels import build_model

    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], np.sort(order[n_test:])
    model = build_model(model_spec, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), batch_size):
            rows = perm[start:start + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(x[test])).argmax(1).numpy()
    return float((pred == y[test]).mean())
