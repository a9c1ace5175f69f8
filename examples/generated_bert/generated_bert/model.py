"""The model: a Hugging Face sequence classifier. This file is yours to change.

The training loop calls three things here: ``add_model_args`` (flags),
``build_model`` (a fresh model) and ``compute_loss`` (the loss of one batch).
"""

import argparse

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .hf import add_hf_args, get_pretrained_model


def add_model_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    return add_hf_args(parser, defaults)


def build_model(args: argparse.Namespace, label_names: list[str]) -> nn.Module:
    return get_pretrained_model(args.bert_type, label_names)


def compute_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def compute_loss(model: nn.Module, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the predicted classes; in fp32 even under autocast."""
    logits = compute_logits(model, batch).float()
    return F.cross_entropy(logits, batch["labels"], reduction=reduction)
