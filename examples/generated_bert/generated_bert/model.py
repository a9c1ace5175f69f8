"""The model: a Hugging Face sequence classifier. This file is yours to change.

The training loop calls three things here: ``add_model_args`` (flags),
``build_model`` (a fresh model) and ``compute_loss`` (the loss of one batch).
"""

import argparse

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .args import apply_defaults
from .hf import add_hf_args, get_pretrained_model


def add_model_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    add_hf_args(parser)
    group = parser.add_argument_group("imbalanced labels")
    group.add_argument(
        "--balance", choices=["none", "oversample", "weights"], default="none",
        help="none; oversample: draw the rarer labels' training texts again until every "
        "label has as many as the commonest (pytorch-quik's RandomOverSampler); weights: "
        "weigh each label's loss by how rare it is (default: %(default)s)",
    )
    return apply_defaults(parser, defaults)


def build_model(args: argparse.Namespace, label_names: list[str]) -> nn.Module:
    return get_pretrained_model(args.bert_type, label_names)


def balanced_class_weights(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """rows / (labels x rows of that label), as sklearn's class_weight="balanced":
    every label then weighs as much in the loss as if the labels were balanced."""
    counts = torch.bincount(labels, minlength=num_labels).float()
    return len(labels) / (num_labels * counts.clamp(min=1))


def compute_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def compute_loss(model: nn.Module, batch: dict, reduction: str = "mean",
                 class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the predicted classes, in fp32 even under autocast.
    With class_weights, the weighted mean (torch's, as with weight= in CrossEntropyLoss)."""
    logits = compute_logits(model, batch).float()
    return F.cross_entropy(logits, batch["labels"], weight=class_weights, reduction=reduction)
