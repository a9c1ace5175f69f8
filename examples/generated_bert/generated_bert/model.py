"""The model's flags: which pretrained model, how long a text, how to weigh labels.
This file is yours to change.

task.py builds the model from them (``Task.build_model``: a Hugging Face sequence
classifier, see hf.py) and computes its loss (``Task.compute_loss``).
"""

import argparse

from .args import apply_defaults
from .hf import add_hf_args


def add_model_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    add_hf_args(parser)
    group = parser.add_argument_group("imbalanced labels")
    group.add_argument(
        "--balance",
        choices=["none", "oversample", "weights"],
        default="none",
        help="none; oversample: draw the rarer labels' training texts again until every "
        "label has as many as the commonest (pytorch-quik's RandomOverSampler); weights: "
        "weigh each label's loss by how rare it is (default: %(default)s)",
    )
    return apply_defaults(parser, defaults)
