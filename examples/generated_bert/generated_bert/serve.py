"""Serve a trained epoch with TorchServe: build an archive, start, stop.

    python -m generated_bert.serve build             # archive the best epoch in serve/model_store/
    python -m generated_bert.serve start             # TorchServe on 127.0.0.1:8080
    python -m generated_bert.api texts.csv --out predictions.csv
    python -m generated_bert.serve stop

`build` serves the model as training recorded it in data/run_info_{date}.json:
the model type (--bert_type), --max_length, the label names, and which epoch
had the lowest validation loss.

Everything lives in serve/ (ignored by git): the archive's files, the model
store, TorchServe's configuration, logs, and key_file.json, which holds the
tokens the server asks for (token authorization stays on unless
--disable_token_auth). TorchServe needs Java 17.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

from .args import PROJECT_DIR, UsageError, checked, positive_int
from .checkpoints import load_run_info, state_dict_path
from .cli import parse_args as training_flags
from .data import load_texts
from .files import write_atomically
from .hf import get_bert_info, get_tokenizer, model_source, save_bert_model, save_tokenizer
from .tracking import STATE_DICT_NAME, TrackingSettings, get_state_dict

SERVE_DIR = PROJECT_DIR / "serve"
MODEL_NAME = "generated_bert"
HANDLER = Path(__file__).with_name("handler.py")
# What the handler loads: a save_pretrained folder, its tokenizer, and the labels.
REQUIRED_FILES = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "setup_config.json",
    "index_to_name.json",
    "handler.py",
]
SERIALIZED_FILE = "model.safetensors"


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


def build_extra_files(
    build_dir: Path, state_dict: Path, run_info: dict, data_dir: Path, data_date: str
) -> Path:
    """Write into build_dir everything the archive holds besides the archiver's own:
    the weights of ``state_dict`` in the form the handler loads, and what it needs
    to read requests, as training recorded them in ``run_info``."""
    build_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(HANDLER, build_dir / "handler.py")  # rendered into the project, never downloaded
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


def create_mar(build_dir: Path, model_store: Path, batch_size: int, max_batch_delay: int) -> Path:
    """Check the archive's files, then run torch-model-archiver; return the .mar."""
    missing = [name for name in REQUIRED_FILES if not (build_dir / name).is_file()]
    if missing:
        raise UsageError(
            f"cannot archive: {', '.join(missing)} missing in {build_dir}; run `build` again"
        )
    if shutil.which("torch-model-archiver") is None:
        raise UsageError("torch-model-archiver is not installed: pip install torch-model-archiver")
    config = build_dir / "model-config.yaml"
    config.write_text(
        f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay}\nresponseTimeout: 120\n"
    )
    extra = [
        str(path)
        for path in sorted(build_dir.iterdir())
        if path.name not in (SERIALIZED_FILE, "handler.py", "model-config.yaml")
    ]
    model_store.mkdir(parents=True, exist_ok=True)
    staging = build_dir.parent / "tmp"  # the archiver stages in $TMPDIR/<model name>
    staging.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            "torch-model-archiver",
            "--model-name",
            MODEL_NAME,
            "--version",
            "1.0",
            "--serialized-file",
            str(build_dir / SERIALIZED_FILE),
            "--handler",
            str(build_dir / "handler.py"),
            "--extra-files",
            ",".join(extra),
            "--config-file",
            str(config),
            "--export-path",
            str(model_store),
            "--force",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(staging)},
    )
    mar = model_store / f"{MODEL_NAME}.mar"
    if result.returncode != 0 or not mar.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"torch-model-archiver failed (exit {result.returncode}): {last}")
    return mar


epoch_type = checked(
    lambda text: text if text in ("best", "orig") else int(text),
    lambda epoch: isinstance(epoch, str) or epoch >= 0,
    "best, orig or an epoch number >= 0",
)
base_port = checked(
    int,
    lambda port: 1 <= port <= 65535 - 4,
    "a port from 1 to 65531: TorchServe takes it and the next four",
)


def ports(base: int) -> dict[str, int]:
    """The five ports TorchServe listens on, from --port upwards."""
    names = ["inference", "management", "metrics", "grpc_inference", "grpc_management"]
    return {name: base + offset for offset, name in enumerate(names)}


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_keys(serve_dir: Path) -> dict[str, str]:
    """The tokens from TorchServe's key_file.json: {"inference": ..., "management": ...}."""
    keys = json.loads((serve_dir / "key_file.json").read_text())
    return {name: keys[name]["key"] for name in ("inference", "management")}


def torchserve_env(serve_dir: Path) -> dict[str, str]:
    # A private TMPDIR gives this server its own pid file and sockets, so it
    # neither collides with another TorchServe nor loses track of itself.
    return {
        **os.environ,
        "TMPDIR": str(serve_dir / "tmp"),
        "LOG_LOCATION": str(serve_dir / "logs"),
        "METRICS_LOCATION": str(serve_dir / "logs"),
    }


def start(serve_dir: Path, port: int, token_auth: bool, timeout: float = 300) -> str:
    """Start TorchServe with the archive and wait until the model answers."""
    if shutil.which("java") is None:
        raise UsageError(
            "TorchServe needs Java 17: install it (Debian/Ubuntu: apt-get install "
            "openjdk-17-jre-headless), then start again"
        )
    if shutil.which("torchserve") is None:
        raise UsageError("torchserve is not installed: pip install torchserve")
    mar = serve_dir / "model_store" / f"{MODEL_NAME}.mar"
    if not mar.is_file():
        raise UsageError(f"no archive at {mar}; run `python -m {__package__}.serve build` first")
    addresses = ports(port)
    busy = [f"{name} {number}" for name, number in addresses.items() if port_in_use(number)]
    if busy:
        raise UsageError(
            f"port(s) in use: {', '.join(busy)}; stop what uses them or pick another --port"
        )
    (serve_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (serve_dir / "key_file.json").unlink(missing_ok=True)
    config = serve_dir / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{addresses['inference']}",
                f"management_address=http://127.0.0.1:{addresses['management']}",
                f"metrics_address=http://127.0.0.1:{addresses['metrics']}",
                "grpc_inference_address=127.0.0.1",
                f"grpc_inference_port={addresses['grpc_inference']}",
                "grpc_management_address=127.0.0.1",
                f"grpc_management_port={addresses['grpc_management']}",
                f"model_store={serve_dir / 'model_store'}",
                "default_workers_per_model=1",
                "disable_system_metrics=true",
                f"disable_token_authorization={'false' if token_auth else 'true'}",
                "token_expiration_min=1440",
            ]
        )
        + "\n"
    )
    # TorchServe writes key_file.json into the folder it starts in; its Java
    # process inherits stdout, so give it a file, not a pipe.
    with open(serve_dir / "torchserve.out", "w") as out:
        subprocess.run(
            [
                "torchserve",
                "--start",
                "--ncs",
                "--model-store",
                str(serve_dir / "model_store"),
                "--models",
                f"{MODEL_NAME}={mar.name}",
                "--ts-config",
                str(config),
            ],
            cwd=serve_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=torchserve_env(serve_dir),
            check=False,
        )
    url = f"http://127.0.0.1:{addresses['management']}/models/{MODEL_NAME}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        # `torchserve --start` exits 0 even when Java fails; its pid file tells.
        if not (serve_dir / "tmp" / ".model_server.pid").exists():
            raise UsageError(f"TorchServe did not start; see {serve_dir / 'logs' / 'ts_log.log'}")
        headers = {}
        if token_auth:
            try:
                headers["Authorization"] = f"Bearer {read_keys(serve_dir)['management']}"
            except (OSError, ValueError, KeyError):
                continue  # the key file is written a moment after start
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                workers = json.load(response)[0].get("workers", [])
        except (OSError, ValueError):
            continue
        if workers and all(worker.get("status") == "READY" for worker in workers):
            return f"http://127.0.0.1:{addresses['inference']}/predictions/{MODEL_NAME}"
    stop(serve_dir)
    raise UsageError(
        f"the model was not ready after {timeout:.0f}s; see {serve_dir / 'logs' / 'model_log.log'}"
    )


def stop(serve_dir: Path) -> bool:
    """Stop the TorchServe started from ``serve_dir``; False if none is running."""
    if not (serve_dir / "tmp" / ".model_server.pid").exists():
        return False
    subprocess.run(
        ["torchserve", "--stop", "--foreground"],
        cwd=serve_dir,
        env=torchserve_env(serve_dir),
        capture_output=True,
        check=False,
    )
    return True


def parse_args(argv=None) -> argparse.Namespace:
    """The serve command's flags; for ``build`` also the training flags (e.g.
    --output_dir), which say where the trained weights are."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.serve", description="Serve a trained epoch with TorchServe."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="archive a saved epoch as a .mar")
    build.add_argument(
        "--epoch",
        type=epoch_type,
        default="best",
        help="the epoch whose state dict to serve: best (the lowest validation "
        "loss), a number such as 2 (0-based), or orig, the weights before "
        "training (default: %(default)s)",
    )
    build.add_argument(
        "--batch_size",
        type=positive_int,
        default=8,
        help="requests TorchServe groups into one batch (default: %(default)s)",
    )
    build.add_argument(
        "--max_batch_delay",
        type=positive_int,
        default=50,
        help="milliseconds TorchServe waits to fill a batch (default: %(default)s)",
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
    begin = commands.add_parser("start", help="start TorchServe on 127.0.0.1 with the archive")
    begin.add_argument(
        "--port",
        type=base_port,
        default=8080,
        help="inference port; management, metrics and gRPC take the next four "
        "(default: %(default)s)",
    )
    begin.add_argument(
        "--disable_token_auth",
        action="store_true",
        help="let any local process query the server without a token",
    )
    commands.add_parser("stop", help="stop the TorchServe started from serve/")
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
    batch_size: int,
    max_batch_delay: int,
    check_settings,
    tracking: TrackingSettings | None = None,
    mlflow_filter: str | None = None,
) -> tuple[Path, int | str, str]:
    """Archive epoch ``epoch`` of the run on ``data_date``, trained into
    ``output_dir``, with the settings it was trained with (``check_settings(run_info,
    data_date)`` refuses others). Returns the archive, the epoch and the date."""
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
    build_extra_files(build_dir, state_dict, run_info, data_dir, data_date)
    mar = create_mar(build_dir, SERVE_DIR / "model_store", batch_size, max_batch_delay)
    return mar, epoch, data_date


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.command == "build":
            mar, epoch, data_date = build(
                args.epoch,
                args.data_dir,
                args.output_dir,
                args.data_date,
                args.batch_size,
                args.max_batch_delay,
                partial(check_trained_settings, args.served_bert_type, args.served_max_length),
                TrackingSettings.pick(vars(args)),
                args.mlflow_filter,
            )
            print(f"wrote {mar}: epoch {epoch} of {data_date}")
        elif args.command == "start":
            url = start(SERVE_DIR, args.port, token_auth=not args.disable_token_auth)
            print(f"serving {url}; tokens in {SERVE_DIR / 'key_file.json'}")
        elif stop(SERVE_DIR):
            print("stopped")
        else:
            print(f"TorchServe is not running (none was started from {SERVE_DIR})")
    except UsageError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
