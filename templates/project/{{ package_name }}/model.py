"""The model: matrix factorisation with biases. This file is yours to change.

The training loop calls three things here: ``add_model_args`` (flags),
``build_model`` (a fresh model) and ``compute_loss`` (the loss of one batch).
"""

import argparse

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .args import positive_int


def add_model_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    group = parser.add_argument_group("model")
    group.add_argument("--embedding_dim", type=positive_int, default=32,
                       help="size of the user and item vectors (default: %(default)s)")
    if defaults:
        parser.set_defaults(**defaults)
    return parser


class MatrixFactorization(nn.Module):
    """rating(u, i) = global bias + user bias + item bias + <user vector, item vector>."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, mean_rating: float):
        super().__init__()
        self.user_vectors = nn.Embedding(num_users, embedding_dim)
        self.item_vectors = nn.Embedding(num_items, embedding_dim)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        # Starting at the mean rating spares the first epoch from learning an offset.
        self.global_bias = nn.Parameter(torch.tensor(float(mean_rating)))
        # Small vectors: their dot products start near zero instead of swamping the biases.
        nn.init.normal_(self.user_vectors.weight, std=0.01)
        nn.init.normal_(self.item_vectors.weight, std=0.01)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        dot = (self.user_vectors(user) * self.item_vectors(item)).sum(dim=-1)
        biases = self.user_bias(user).squeeze(-1) + self.item_bias(item).squeeze(-1)
        return self.global_bias + biases + dot


def build_model(args: argparse.Namespace, train_set: dict, id_maps: dict) -> nn.Module:
    return MatrixFactorization(
        num_users=len(id_maps["users"]),
        num_items=len(id_maps["items"]),
        embedding_dim=args.embedding_dim,
        mean_rating=train_set["rating"].mean().item(),
    )


def compute_loss(model: nn.Module, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Squared error of the predicted ratings; its mean over a split is the MSE."""
    predicted = model(batch["user"], batch["item"])
    return F.mse_loss(predicted.float(), batch["rating"], reduction=reduction)
