"""Serve a trained epoch: build the model's files, start a server, stop it.

    python -m generated_bert.serve build             # the best epoch's files, packed to serve
    python -m generated_bert.serve start             # a server on 127.0.0.1:8080
    python -m generated_bert.api records.csv --out predictions.csv
    python -m generated_bert.serve stop

`build` serves the latest run (or --run NAME) as training recorded it in the run's
run_info_{date}.json: the settings that shape the model, and which epoch had the
lowest validation loss.
What differs by kind (the model's files, how the client reads records) is in
serving.py; what differs by engine (packing, starting, stopping, posting) is in
ray_serve.py. Everything lives in serve/, which git ignores.
"""

import argparse
import shutil
import sys
from pathlib import Path

from . import ray_serve as engine
from .args import PROJECT_DIR, UsageError, checked
from .checkpoints import load_run_info, state_dict_path
from .cli import parse_args as training_flags
from .runs import find_run
from .serving import MODEL_FILES, ServedSettings, add_trained_settings_flags, write_model_files
from .tracking import STATE_DICT_NAME, TrackingSettings, get_state_dict

SERVE_DIR = PROJECT_DIR / "serve"


def check_model_files(build_dir: Path) -> None:
    missing = [name for name in MODEL_FILES if not (build_dir / name).is_file()]
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
    --run, --output_dir), which say where the trained weights are."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.serve",
        description=f"Serve a trained epoch with {engine.NAME}.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write a saved epoch's files, packed to serve")
    build.add_argument(
        "--epoch",
        type=epoch_type,
        default="best",
        help="the epoch whose state dict to serve: best (the lowest validation "
        "loss), a number such as 2 (0-based), or orig, the weights before "
        "training (default: %(default)s)",
    )
    add_trained_settings_flags(build)
    engine.add_build_flags(build)
    build.add_argument(
        "--mlflow_filter",
        default=None,
        help="take the state dict from the one MLflow run this filter matches, "
        "e.g. \"attributes.run_name = 'baseline'\"; --epoch best is its "
        "best_epoch tag, the model's settings those recorded here",
    )
    start = commands.add_parser("start", help=f"start {engine.NAME} on 127.0.0.1 with the build")
    engine.add_start_flags(start)
    commands.add_parser("stop", help=f"stop the {engine.NAME} started from serve/")
    args, rest = parser.parse_known_args(argv)
    if args.command != "build":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args
    # The rest are training flags, e.g. --run, --output_dir or --data_date.
    return argparse.Namespace(**{**vars(training_flags(rest)), **vars(args)})


def build(
    epoch: int | str,
    data_dir: Path,
    run_folder: Path,
    data_date: str,
    served: ServedSettings,
) -> tuple[Path, int | str]:
    """Write into serve/build/ what serves epoch ``epoch`` of the run on ``data_date``
    whose weights and record (the settings it trained with) are in ``run_folder``
    (``served`` may repeat those settings, never change them). Returns the folder
    and the epoch."""
    run_info = load_run_info(run_folder, data_date)
    differences = served.differences(run_info)
    if differences:
        given = ", ".join(f"{flag} {value}" for flag, value, _ in differences)
        recorded = ", ".join(f"{flag} {value}" for flag, _, value in differences)
        flags = ", ".join(flag for flag, _, _ in differences)
        raise UsageError(
            f"{given}: the weights of {data_date} were trained with {recorded}; "
            f"drop {flags} to serve them as trained"
        )
    if epoch == "best":
        if run_info["best_epoch"] is None:
            raise UsageError(
                f"no epoch of the run on {data_date} has finished yet; "
                "build once one has, or pass --epoch orig"
            )
        epoch = run_info["best_epoch"]
    state_dict = state_dict_path(run_folder, epoch, data_date)
    if not state_dict.is_file():
        raise UsageError(
            f"no state dict for epoch {epoch} of {data_date} in "
            f"{run_folder}; train first, or pick another --epoch"
        )
    build_dir = SERVE_DIR / "build"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    write_model_files(build_dir, state_dict, run_info, data_dir, data_date)
    check_model_files(build_dir)
    return build_dir, epoch


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.command == "build":
            epoch, data_date = args.epoch, args.data_date
            if args.mlflow_filter:
                # The MLflow run names the epoch ("best": its best_epoch tag) and the
                # data set, and holds the run's record beside its state dicts.
                tracking = TrackingSettings.pick(vars(args))
                into = SERVE_DIR / "from_mlflow"
                shutil.rmtree(into, ignore_errors=True)
                fetched = get_state_dict(tracking, epoch, into, args.mlflow_filter)
                saved = STATE_DICT_NAME.match(fetched.name)
                epoch, run_folder, data_date = saved["epoch"], fetched.parent, saved["date"]
                run_name = f"the MLflow run {args.mlflow_filter!r}"
            else:
                run_folder = find_run(args.output_dir, args.run, data_date)
                run_name = f"run {run_folder.name}"
            build_dir, epoch = build(
                epoch, args.data_dir, run_folder, data_date, ServedSettings.pick(vars(args))
            )
            packed = engine.package(build_dir, SERVE_DIR, engine.PackageSettings.pick(vars(args)))
            print(f"wrote {packed}: epoch {epoch} of {run_name} on {data_date}")
        elif args.command == "start":
            url = engine.start(SERVE_DIR, engine.ServerSettings.pick(vars(args)))
            print(f"serving {url}; its configuration and logs are in {SERVE_DIR}")
        elif engine.stop(SERVE_DIR):
            print("stopped")
        else:
            print(f"{engine.NAME} is not running (none was started from {SERVE_DIR})")
    except UsageError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
