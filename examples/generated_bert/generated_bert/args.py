"""Command-line argument groups.

Each ``add_*_args(parser, defaults=None)`` adds one group of flags to ``parser``
and returns it. ``defaults`` overrides the default of any flag by its ``dest``
name, so a script can change defaults without touching this file:

    parser = add_learn_args(argparse.ArgumentParser(), {"epochs": 10, "lr": 3e-4})

Arguments can then come from four places, later ones winning: these defaults,
the ``defaults`` dict, the command line, and edits to the parsed Namespace.
"""

import argparse
import dataclasses
import re
from datetime import datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


class UsageError(Exception):
    """A problem the user fixes by running differently (bad flags, missing files, a
    diverging loss); shown as one line, without a traceback."""


class FlagValues:
    """Base of a dataclass holding some flags' values, so that a function gets the
    few values it uses rather than the whole namespace:

        @dataclass(frozen=True)
        class TaskSettings(FlagValues):
            embedding_dim: int

        settings = TaskSettings.pick(vars(args))
    """

    @classmethod
    def pick(cls, values: dict):
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def checked(convert, accept, requirement: str):
    """An argparse type: convert(text), refused unless accept(value), so that a bad
    value is named with what it must be rather than as "invalid int value"."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # nan fails every comparison
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = checked(int, lambda value: value >= 1, "a whole number >= 1")
non_negative_int = checked(int, lambda value: value >= 0, "a whole number >= 0")
positive_float = checked(float, lambda value: value > 0, "a number > 0")
non_negative_float = checked(float, lambda value: value >= 0, "a number >= 0")
fraction = checked(float, lambda value: 0 < value < 1, "a fraction between 0 and 1")
unit_interval = checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")
port = checked(int, lambda value: 1 <= value <= 65535, "a port from 1 to 65535")


@dataclasses.dataclass(frozen=True)
class Interval:
    """--save_every: every ``steps`` optimizer steps, or every ``seconds`` of
    training; neither (0) when both are 0."""

    steps: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.seconds / 60:g}m" if self.seconds else str(self.steps)


def interval_type(text: str) -> Interval:
    """An argparse type: '500' -> every 500 steps; '30s', '10m', '1h' -> every so
    long; '0' -> never."""
    units = {"s": 1, "m": 60, "h": 3600}
    problem = f"must be a number of steps such as 500, or a time such as 30s, 10m or 1h, got {text}"
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, None)
    try:
        value = float(number) if unit else int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if not value >= 0:  # nan fails every comparison
        raise argparse.ArgumentTypeError(problem)
    return Interval(seconds=value * unit) if unit else Interval(steps=value)


def betas_type(text: str) -> tuple[float, float]:
    """'0.9, 0.999' -> (0.9, 0.999), each in [0, 1)."""
    problem = f"must be two numbers in [0, 1) such as 0.9,0.999, got {text}"
    try:
        betas = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise argparse.ArgumentTypeError(problem)
    return betas


def date_type(text: str) -> str:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYYMMDD, got {text}") from None
    return text


def run_name_type(text: str) -> str:
    """A run's name is a folder's name: letters, digits, '.', '_' and '-'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(
            f"must be a folder name of letters, digits, '.', '_' and '-', got {text!r}"
        )
    return text


def apply_defaults(parser: argparse.ArgumentParser, defaults: dict | None):
    """parser.set_defaults(**defaults), refusing names no flag has (a typo would
    otherwise be ignored); returns the parser, as every add_*_args does."""
    if not defaults:
        return parser
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"unknown argument default(s): {', '.join(unknown)}")
    parser.set_defaults(**defaults)
    return parser


def add_ddp_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    """Where and how many processes train: GPUs, CPU processes, nodes."""
    group = parser.add_argument_group("distributed")
    group.add_argument(
        "-g",
        "--gpus",
        type=non_negative_int,
        default=None,
        help="GPUs per node; N > 1 starts one process per GPU with NCCL, 0 trains on the CPU. "
        "Falls back to the CPU with a warning when no GPU is visible "
        "(default: one GPU if one is visible, else the CPU)",
    )
    group.add_argument(
        "--procs",
        type=positive_int,
        default=1,
        help="CPU processes per node when no GPU is used; N > 1 runs DDP with gloo "
        "(default: %(default)s)",
    )
    group.add_argument(
        "-n",
        "--nodes",
        type=positive_int,
        default=1,
        help="number of machines taking part in the job (default: %(default)s)",
    )
    group.add_argument(
        "-nr",
        "--nr",
        type=non_negative_int,
        default=0,
        help="rank of this machine among --nodes, 0 is the master (default: %(default)s)",
    )
    group.add_argument(
        "--master_addr",
        default=None,
        help="address of node 0, reachable from every node; required on the other nodes "
        "(default: 127.0.0.1, this machine)",
    )
    group.add_argument(
        "--master_port",
        type=port,
        default=None,
        help="port on node 0 for the rendezvous; required with --nodes > 1, "
        "a free port is picked for single-node jobs",
    )
    group.add_argument(
        "--local-rank",
        "--local_rank",
        dest="local_rank",
        type=int,
        default=None,
        help="accepted for launchers that pass it (torch.distributed.launch); the ranks are "
        "read from the environment that torchrun sets",
    )
    return apply_defaults(parser, defaults)


def add_learn_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    """What and how to train: epochs, batch size, optimizer, precision, files."""
    group = parser.add_argument_group("learning")
    group.add_argument(
        "-e",
        "--epochs",
        type=positive_int,
        default=5,
        help="passes over the training data (default: %(default)s)",
    )
    group.add_argument(
        "-bs",
        "--bs",
        type=positive_int,
        default=1024,
        help="batch size per process; the global batch is bs x processes x accumulate "
        "(default: %(default)s)",
    )
    group.add_argument(
        "-lr",
        "--learning_rate",
        "--lr",
        dest="lr",
        type=positive_float,
        default=1e-3,
        help="peak learning rate (default: %(default)s)",
    )
    group.add_argument(
        "--warmup_ratio",
        type=unit_interval,
        default=0.0,
        help="share of the steps over which the learning rate rises linearly from 0 to --lr; "
        "it then falls linearly to 0 at the last step (default: %(default)s)",
    )
    group.add_argument(
        "-wd",
        "--weight_decay",
        type=non_negative_float,
        default=0.0,
        help="decoupled weight decay of AdamW, on weight matrices only: not on biases, norm "
        "weights or embedding tables (default: %(default)s)",
    )
    group.add_argument(
        "--betas",
        type=betas_type,
        default=(0.9, 0.999),
        help="Adam betas as two comma-separated numbers (default: 0.9,0.999)",
    )
    group.add_argument(
        "-eps",
        "--eps",
        type=positive_float,
        default=1e-8,
        help="Adam epsilon, added to the denominator for stability (default: %(default)s)",
    )
    group.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "auto"],
        default="fp32",
        help="fp32, or mixed precision: bf16 (autocast), fp16 (autocast and a gradient "
        "scaler), auto (bf16 where the device runs it natively, else fp16) "
        "(default: %(default)s)",
    )
    group.add_argument(
        "-amp",
        "--mixed_precision",
        dest="precision",
        action="store_const",
        const="auto",
        help="the same as --precision auto (pytorch-quik's flag)",
    )
    group.add_argument(
        "--clip_grad",
        type=positive_float,
        default=None,
        help="clip the gradient norm to this value before each step (default: no clipping)",
    )
    group.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="stop when valid_loss has not improved for this many epochs; either way the "
        "test metrics are taken with the best epoch's weights (default: train every epoch)",
    )
    group.add_argument(
        "--accumulate",
        type=positive_int,
        default=1,
        help="micro-batches whose gradients add up to one optimizer step (default: %(default)s)",
    )
    group.add_argument(
        "--log_every",
        type=positive_int,
        default=10,
        help="read the training loss from the device every this many steps, for the "
        "progress bar, the logs and the check that it is finite: reading it makes the CPU "
        "wait for the GPU (default: %(default)s)",
    )
    group.add_argument(
        "--resume",
        nargs="?",
        const="always",
        choices=["always", "auto"],
        default=None,
        help="continue the latest run (or --run NAME) from its checkpoint, written after "
        "every epoch, every --save_every and on SIGTERM or Ctrl-C; --resume auto starts "
        "a new run instead where that run has no checkpoint or has finished, as "
        "torchrun --max-restarts and re-queued jobs need",
    )
    group.add_argument(
        "--save_every",
        type=interval_type,
        default=Interval(seconds=600),
        metavar="STEPS|TIME",
        help="also write the checkpoint mid-epoch, every this many optimizer steps (500) "
        "or this long (30s, 10m, 1h), so that a killed run loses at most that much; it "
        "is written on a thread of its own while training goes on; 0: only after each "
        "epoch (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for weight initialisation and the per-epoch shuffles (default: %(default)s)",
    )
    group.add_argument(
        "--data_dir",
        type=Path,
        default=PROJECT_DIR / "data",
        help="folder of the data tensors, state dicts and metrics (default: the project's data/)",
    )
    group.add_argument(
        "--data_date",
        type=date_type,
        default=None,
        help="YYYYMMDD date of the data set to train on (default: the newest in --data_dir)",
    )
    group.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="folder whose runs/ holds a folder per run, with its state dicts, checkpoint "
        "and metrics (default: --data_dir)",
    )
    group.add_argument(
        "--run",
        type=run_name_type,
        default=None,
        metavar="NAME",
        help="the run's folder in OUTPUT_DIR/runs/: a new run's name (default: when it "
        "starts, e.g. 20241207-153012), or the run to --resume or serve (default: the "
        "latest)",
    )
    group.add_argument(
        "--find_unused_parameters",
        action="store_true",
        help="let DDP tolerate parameters that get no gradient in a step",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="run the model through torch.compile: a minute or more to compile, then "
        "faster steps on a GPU; the saved weights are the same either way",
    )
    return apply_defaults(parser, defaults)
