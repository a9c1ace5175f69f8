"""The training command line: its flags, and the parsed values every part reads.

main.py trains with them; serve.py reads the same flags to find what was trained.
"""

import argparse

from .args import UsageError, add_ddp_args, add_learn_args
from .files import find_data_date
from .model import add_model_args
from .task import TRAINING_DEFAULTS
from .tracking import add_tracking_args
from .tune import add_ray_tune_args, load_config_file, load_search_space

PREPARE_DATA = "python -m generated_bert.data --synthetic"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="Train the generated-bert model.",
    )
    add_ddp_args(parser)
    add_learn_args(parser, TRAINING_DEFAULTS)
    add_model_args(parser)
    add_tracking_args(parser)
    add_ray_tune_args(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, with the paths made absolute (processes started later may run in
    other folders) and the data set's date decided once, so every rank reads the
    same files. Raises UsageError when there is no prepared data, or a
    search's tune.yaml is wrong (``args.search_space`` holds it checked)."""
    parser = build_parser()
    # --config FILE: its values replace the defaults; flags on the command line still win.
    config_file = parser.parse_known_args(argv)[0].config
    if config_file:
        try:
            parser.set_defaults(**load_config_file(config_file, parser))
        except UsageError as error:  # argparse's way: usage, the problem, exit 2
            parser.error(str(error))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    args.output_dir = (args.output_dir or args.data_dir).resolve()
    args.data_date = find_data_date(args.data_dir, args.data_date, PREPARE_DATA)
    # tune.yaml is checked here, before a tracker's run opens or Ray starts: a typo
    # costs seconds, not a cluster start.
    args.search_space = load_search_space(args.tune_config, parser) if args.use_ray_tune else None
    return args
