"""Where things live on disk, and how they are written.

Every file of a data set and of the models trained on it carries the data set's
date, ``YYYYMMDD``: ``train_tensor_20240131.pt``, ``state_dict_e3_20240131.pt``.
Tensors are plain dicts of tensors, loadable with ``weights_only=True``. Writes
go to a temporary file that is then renamed over the target, so a crash never
leaves a half-written file behind.
"""

import json
import os
import re
import tempfile
from datetime import date
from pathlib import Path

import torch

from .args import UsageError

# data/train_text_{date}.csv marks a prepared data set.
PREPARED, PREPARED_SUFFIX = "train_text", ".csv"
PREPARED_NAME = re.compile("^" + PREPARED + r"_(\d{8})" + re.escape(PREPARED_SUFFIX) + "$")


def today() -> str:
    return date.today().strftime("%Y%m%d")


def data_file(data_dir: Path, name: str, data_date: str, suffix: str = ".pt") -> Path:
    """data/{name}_{date}{suffix}, e.g. data_file(d, "state_dict_e0", "20240131")."""
    return Path(data_dir) / f"{name}_{data_date}{suffix}"


def newest_data_date(data_dir: Path) -> str | None:
    """The newest date that has a prepared training set in data_dir, or None."""
    names = (path.name for path in Path(data_dir).glob(f"{PREPARED}_*"))
    dates = [match.group(1) for name in names if (match := PREPARED_NAME.match(name))]
    return max(dates, default=None)


def find_data_date(data_dir: Path, requested: str | None, prepare_command: str) -> str:
    """The date of the data set to train on: the one asked for, or the newest."""
    data_date = requested or newest_data_date(data_dir)
    if data_date is None:
        raise UsageError(f"no prepared data in {data_dir}; run `{prepare_command}` first")
    if not data_file(data_dir, PREPARED, data_date, PREPARED_SUFFIX).is_file():
        raise UsageError(
            f"no data set dated {data_date} in {data_dir}; drop --data_date to use the "
            f"newest, or run `{prepare_command} --data_date {data_date}`"
        )
    return data_date


def write_atomically(path: Path, write) -> Path:
    """Call write(tmp_path), then rename tmp_path over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files a process killed while writing ``path`` left behind
    (see write_atomically). Only for files one process writes at a time, such as a
    run's weights and records: another writer's file in progress would go too."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def save_torch(obj, path: Path) -> Path:
    return write_atomically(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path, device: torch.device | str = "cpu"):
    # weights_only: a .pt file can run arbitrary code when unpickled in full.
    # mmap: tensors loaded to the CPU are read from the file as they are used, and
    # the processes of one machine share those pages instead of each holding a
    # copy (a prepared MovieLens 25M is 500 MB).
    return torch.load(path, map_location=device, weights_only=True, mmap=True)


def save_data_info(
    data_dir: Path, data_date: str, source: str, rows: int, skipped_rows: int
) -> Path:
    """data/data_info_{date}.json: where a prepared data set came from, for the run's records."""
    info = {"source": source, "rows": rows, "skipped_rows": skipped_rows}
    path = data_file(data_dir, "data_info", data_date, ".json")
    return write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))


def load_data_info(data_dir: Path, data_date: str) -> dict | None:
    """What save_data_info wrote, or None for a data set prepared before it existed."""
    path = data_file(data_dir, "data_info", data_date, ".json")
    return json.loads(path.read_text()) if path.is_file() else None
