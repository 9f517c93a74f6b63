"""The classifier networks and the module that is exported for inference.

:class:`ScoreModel` takes *raw* features (the columns of the model card's feature order, as
:meth:`utils.processing.selection.EventSelection.feature_matrix` returns them), applies the input
normalisation stored in its buffers and returns the signal probability. The same module is
trained (through :meth:`ScoreModel.logits`, for a numerically stable loss) and exported with
TorchScript, so inference cannot forget or re-implement the normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: hidden-layer widths by architecture name; "reference" is the AGC notebook's network
#: Linear(n,32)-ReLU-Linear(32,64)-ReLU-Linear(64,1)-Sigmoid
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "reference": (32, 64),
    "wide": (64, 64, 64),
}


@dataclass(frozen=True)
class Normalisation:
    """Input standardisation ``(x - mean) / std`` per feature (float32 values)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class Dense(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and state-dict keys) without TorchScript
    constants: TorchScript writes a module's constants in set order, which changes with Python's
    string-hash seed, so exports of ``nn.Linear`` are not byte-reproducible between processes."""

    __constants__: list[str] = []  # noqa: RUF012 (TorchScript reads this class attribute)


def mlp(n_inputs: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Linear-ReLU blocks of the given widths and one output logit."""
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [Dense(width, h), nn.ReLU()]
        width = h
    layers.append(Dense(width, 1))
    return nn.Sequential(*layers)


class ScoreModel(nn.Module):
    """Raw features ``[n, k]`` (float32) -> signal score in [0, 1] ``[n]``."""

    def __init__(self, n_inputs: int, hidden: tuple[int, ...], normalisation: Normalisation | None = None):
        super().__init__()
        mean = torch.zeros(n_inputs) if normalisation is None else torch.tensor(normalisation.mean, dtype=torch.float32)
        std = torch.ones(n_inputs) if normalisation is None else torch.tensor(normalisation.std, dtype=torch.float32)
        if mean.shape != (n_inputs,) or std.shape != (n_inputs,):
            raise ValueError(f"normalisation needs {n_inputs} means and standard deviations")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = mlp(n_inputs, hidden)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))
