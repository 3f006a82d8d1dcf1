"""An MLP on scikit-learn's bundled handwritten digits (8x8 images, 1,797 samples; no download).

The components to ablate: width and depth, dropout, batch norm, activation, input-noise
augmentation, and the optimizer / schedule (through ``train``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablator import ModelConfig, ModelWrapper, RunConfig


class DigitsModel(ModelConfig):
    hidden: int = 128
    depth: int = 2
    dropout: float = 0.2
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    batchnorm: bool = True
    augment_noise: float = 0.1  # std of Gaussian noise added to standardised training inputs


class DigitsConfig(RunConfig[DigitsModel]):
    pass


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_mlp(m: DigitsModel, n_in: int = 64, n_out: int = 10) -> nn.Module:
    layers: list[nn.Module] = [GaussianNoise(m.augment_noise)] if m.augment_noise > 0 else []
    width = n_in
    for _ in range(m.depth):
        layers.append(nn.Linear(width, m.hidden))
        if m.batchnorm:
            layers.append(nn.BatchNorm1d(m.hidden))
        layers.append(_ACTIVATIONS[m.activation]())
        if m.dropout > 0:
            layers.append(nn.Dropout(m.dropout))
        width = m.hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class GaussianNoise(nn.Module):
    """Input-noise augmentation, active in training mode only. It draws from torch's global RNG,
    which checkpoints restore, so a resumed run draws the same noise."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x) if self.training else x


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed 80/20 split (independent of the trial seed), standardised with training stats."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    tr, va = perm[:n_train], perm[n_train:]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[tr], y[tr], x[va], y[va]


class DigitsWrapper(ModelWrapper[DigitsConfig]):
    config_type = DigitsConfig

    def make_model(self, config: DigitsConfig) -> nn.Module:
        return build_mlp(config.model)

    def make_dataloaders(self, config: DigitsConfig) -> tuple[DataLoader, DataLoader]:
        x_tr, y_tr, x_va, y_va = load_digits_tensors()
        train = DataLoader(TensorDataset(x_tr, y_tr), batch_size=config.train.batch_size, shuffle=True)
        val = DataLoader(TensorDataset(x_va, y_va), batch_size=512)
        return train, val
