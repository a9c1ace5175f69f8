"""Serve a trained epoch with Ray Serve: build the model's files, start, stop.

    python -m generated_bert.serve build             # the best epoch's files in serve/build/
    python -m generated_bert.serve start             # Ray Serve on 127.0.0.1:8080
    python -m generated_bert.api texts.csv --out predictions.csv
    python -m generated_bert.serve stop

`build` serves the model as training recorded it in data/run_info_{date}.json:
the model type (--bert_type), --max_length, the label names, and which epoch
had the lowest validation loss.

Everything lives in serve/ (ignored by git): the model's files, and the server's
pid file and log. The server is a process of its own running a private Ray
cluster; requests are batched (--max_batch_size, --batch_wait_timeout_s) across
--replicas copies of the model.
"""

import argparse
import json
import shutil
import sys
from functools import partial
from pathlib import Path

from .args import PROJECT_DIR, UsageError, checked, non_negative_float, positive_int
from .checkpoints import load_run_info, state_dict_path
from .cli import parse_args as training_flags
from .data import load_texts
from .files import write_atomically
from .hf import get_bert_info, get_tokenizer, model_source, save_bert_model, save_tokenizer
from .ray_serve import port_number, start, stop
from .tracking import STATE_DICT_NAME, TrackingSettings, get_state_dict

SERVE_DIR = PROJECT_DIR / "serve"
# What the handler loads: a save_pretrained folder, its tokenizer, and the labels.
REQUIRED_FILES = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "setup_config.json",
    "index_to_name.json",
]


def mismatch(flag: str, given, recorded, data_date: str) -> UsageError:
    return UsageError(
        f"{flag} {given}: the weights of {data_date} were trained with {flag} "
        f"{recorded}; drop {flag} to serve them as trained"
    )


def check_trained_settings(
    bert_type: str | None, max_length: int | None, run_info: dict, data_date: str
) -> None:
    """The model type and --max_length are served as training recorded them. Given
    here too, they must agree: weights read through another tokenizer give wrong
    answers, not an error."""
    if bert_type is not None and model_source(bert_type) != run_info["bert_type"]:
        raise mismatch("--bert_type", bert_type, run_info["bert_type"], data_date)
    if max_length is not None and max_length != run_info["max_length"]:
        raise mismatch("--max_length", max_length, run_info["max_length"], data_date)


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2) + "\n"
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_model_files(
    build_dir: Path, state_dict: Path, run_info: dict, data_dir: Path, data_date: str
) -> Path:
    """Write into build_dir what the handler serves: the weights of ``state_dict`` in
    the form it loads, and what it needs to read requests, as training recorded them
    in ``run_info``."""
    build_dir.mkdir(parents=True, exist_ok=True)
    label_names = run_info["label_names"]
    save_bert_model(run_info["bert_type"], label_names, state_dict, build_dir)
    save_tokenizer(get_tokenizer(run_info["bert_type"]), build_dir)
    write_json(
        build_dir / "setup_config.json",
        get_bert_info(run_info["bert_type"], label_names, run_info["max_length"]),
    )
    write_json(build_dir / "index_to_name.json", dict(enumerate(label_names)))
    sample = load_texts(data_dir, "test", data_date)[0][:3]
    write_json(build_dir / "sample_text.json", sample)
    return build_dir


def check_model_files(build_dir: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (build_dir / name).is_file()]
    if missing:
        raise UsageError(
            f"cannot serve: {', '.join(missing)} missing in {build_dir}; run `build` again"
        )


epoch_type = checked(
    lambda text: text if text in ("best", "orig") else int(text),
    lambda epoch: isinstance(epoch, str) or epoch >= 0,
    "best, orig or an epoch number >= 0",
)


def parse_args(argv=None) -> argparse.Namespace:
    """The serve command's flags; for ``build`` also the training flags (e.g.
    --output_dir), which say where the trained weights are."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.serve",
        description="Serve a trained epoch with Ray Serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write a saved epoch's files for serving")
    build.add_argument(
        "--epoch",
        type=epoch_type,
        default="best",
        help="the epoch whose state dict to serve: best (the lowest validation "
        "loss), a number such as 2 (0-based), or orig, the weights before "
        "training (default: %(default)s)",
    )
    build.add_argument(
        "-bt",
        "--bert_type",
        dest="served_bert_type",
        default=None,
        help="not needed: the model type training recorded is served; a different one is refused",
    )
    build.add_argument(
        "--max_length",
        dest="served_max_length",
        type=positive_int,
        default=None,
        help="not needed: the --max_length training recorded is served; a different one is refused",
    )
    build.add_argument(
        "--mlflow_filter",
        default=None,
        help="take the state dict from the one MLflow run this filter matches, "
        "e.g. \"attributes.run_name = 'baseline'\"; --epoch best is its "
        "best_epoch tag, the model's settings those recorded here",
    )
    begin = commands.add_parser("start", help="start Ray Serve on 127.0.0.1 with the built files")
    begin.add_argument(
        "--port", type=port_number, default=8080, help="HTTP port (default: %(default)s)"
    )
    begin.add_argument(
        "--replicas",
        type=positive_int,
        default=1,
        help="copies of the model serving at once, each in its own process (default: %(default)s)",
    )
    begin.add_argument(
        "--max_batch_size",
        type=positive_int,
        default=8,
        help="requests one replica answers in one batch (default: %(default)s)",
    )
    begin.add_argument(
        "--batch_wait_timeout_s",
        type=non_negative_float,
        default=0.05,
        help="seconds a replica waits to fill a batch (default: %(default)s)",
    )
    commands.add_parser("stop", help="stop the Ray Serve started from serve/")
    args, rest = parser.parse_known_args(argv)
    if args.command != "build":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args
    # The rest are training flags, e.g. --output_dir or --data_date.
    return argparse.Namespace(**{**vars(training_flags(rest)), **vars(args)})


def build(
    epoch: int | str,
    data_dir: Path,
    output_dir: Path,
    data_date: str,
    check_settings,
    tracking: TrackingSettings | None = None,
    mlflow_filter: str | None = None,
) -> tuple[Path, int | str, str]:
    """Write the files that serve epoch ``epoch`` of the run on ``data_date``, trained
    into ``output_dir``, with the settings it was trained with (``check_settings(run_info,
    data_date)`` refuses others). Returns their folder, the epoch and the date."""
    trained_in = output_dir  # where training recorded the run's settings
    if mlflow_filter:
        # The run names the epoch ("best": its best_epoch tag) and the data set;
        # the settings are those this project recorded when it trained on that data.
        fetched = get_state_dict(tracking, epoch, SERVE_DIR / "from_mlflow", mlflow_filter)
        saved = STATE_DICT_NAME.match(fetched.name)
        output_dir, epoch, data_date = fetched.parent, saved["epoch"], saved["date"]
    run_info = load_run_info(trained_in, data_date)
    check_settings(run_info, data_date)
    if epoch == "best":
        if run_info["best_epoch"] is None:
            raise UsageError(
                f"no epoch of the run on {data_date} has finished yet; "
                "build once one has, or pass --epoch orig"
            )
        epoch = run_info["best_epoch"]
    state_dict = state_dict_path(output_dir, epoch, data_date)
    if not state_dict.is_file():
        raise UsageError(
            f"no state dict for epoch {epoch} of {data_date} in "
            f"{output_dir}; train first, or pick another --epoch"
        )
    build_dir = SERVE_DIR / "build"
    shutil.rmtree(build_dir, ignore_errors=True)
    write_model_files(build_dir, state_dict, run_info, data_dir, data_date)
    check_model_files(build_dir)
    return build_dir, epoch, data_date


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.command == "build":
            build_dir, epoch, data_date = build(
                args.epoch,
                args.data_dir,
                args.output_dir,
                args.data_date,
                partial(check_trained_settings, args.served_bert_type, args.served_max_length),
                TrackingSettings.pick(vars(args)),
                args.mlflow_filter,
            )
            print(f"wrote {build_dir}: epoch {epoch} of {data_date}")
        elif args.command == "start":
            url = start(
                SERVE_DIR, args.port, args.replicas, args.max_batch_size, args.batch_wait_timeout_s
            )
            print(f"serving {url}")
        elif stop(SERVE_DIR):
            print("stopped")
        else:
            print(f"Ray Serve is not running (none was started from {SERVE_DIR})")
    except UsageError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
