"""A user's own model, as ``package.module:factory``, for the training tests (imported by head and providers)."""


def small_mlp():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
