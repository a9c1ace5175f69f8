"""One folder per training run, so that no run overwrites another's files.

    data/runs/20241207-153012/         a run, named for when it started (or --run NAME)
        state_dict_e0_20240131.pt      its files, as checkpoints.py lists them; the
        checkpoint_20240131.pt         date in their names is still the data set's,
        run_info_20240131.json         whose prepared files data/ keeps for every run
        ...

Readers (--resume, serve build) take the latest run on the data set, the one
started last, unless --run names another. Projects trained before runs had
folders wrote a run's files straight into data/: while no folder holds a run on
that data set, those files are its latest run.
"""

import tempfile
from datetime import datetime
from pathlib import Path

from .args import UsageError
from .checkpoints import checkpoint_path, run_record

RUNS = "runs"


def runs_on(output_dir: Path, data_date: str) -> list[Path]:
    """The folders of the runs trained on the data of ``data_date``, oldest first."""
    started = {}
    for folder in Path(output_dir, RUNS).glob("*"):
        record = run_record(folder, data_date)
        if record is not None:
            started[folder] = (record.get("started", ""), folder.name)
    return sorted(started, key=started.get)


def latest_run(output_dir: Path, data_date: str) -> Path | None:
    """The folder of the run started last on the data of ``data_date``, or None."""
    folders = runs_on(output_dir, data_date)
    if folders:
        return folders[-1]
    # A run written before runs had folders: its files are in output_dir itself.
    return Path(output_dir) if run_record(output_dir, data_date) is not None else None


def named_or_latest(output_dir: Path, name: str | None, data_date: str) -> Path | None:
    """The folder run ``name`` has (or would have), or the latest run's (None: no run)."""
    return latest_run(output_dir, data_date) if name is None else Path(output_dir, RUNS, name)


def find_run(output_dir: Path, name: str | None, data_date: str) -> Path:
    """The folder of run ``name`` on the data of ``data_date``, or of the latest run."""
    folder = named_or_latest(output_dir, name, data_date)
    if folder is not None and run_record(folder, data_date) is not None:
        return folder
    which = "no run" if name is None else f"--run {name}: no run of that name"
    # Trained on another data set? Say which: the data set's date is a flag too.
    records = list(Path(output_dir).glob(f"{RUNS}/{name or '*'}/run_info_*.json"))
    if name is None:
        records += Path(output_dir).glob("run_info_*.json")
    dates = sorted({path.stem.rsplit("_", 1)[1] for path in records})
    if dates:
        raise UsageError(
            f"{which} on the data of {data_date} in {output_dir}; it has runs on the data "
            f"of {', '.join(dates)}: pass --data_date {dates[-1]} to use the latest of those"
        )
    names = ", ".join(sorted(run.name for run in Path(output_dir, RUNS).glob("*")))
    known = f" (its runs: {names})" if names else ""
    raise UsageError(
        f"{which} in {output_dir}{known}; train first, or pass the --output_dir it was trained in"
    )


def run_to_resume(
    output_dir: Path, name: str | None, data_date: str, resume: str | None
) -> tuple[Path | None, bool]:
    """Which run --resume continues: (its folder, whether from its checkpoint), or
    (None, False) for a new run. --resume continues run ``name``, or the latest;
    --resume auto does so where that run has a checkpoint and has not finished,
    and otherwise starts afresh: a new run, or run ``name`` again from its start."""
    if resume is None:
        return None, False
    if resume == "always":
        try:
            return find_run(output_dir, name, data_date), True
        except UsageError as error:
            raise UsageError(f"--resume: {error}") from None
    folder = named_or_latest(output_dir, name, data_date)
    record = run_record(folder, data_date) if folder is not None else None
    if record is None or record.get("finished"):
        return None, False
    if checkpoint_path(folder, data_date).is_file():
        return folder, True
    # Stopped before its first checkpoint: run ``name`` starts again in its folder.
    return (folder, False) if name is not None else (None, False)


def new_run_name() -> str:
    """A run's name by default: when it started, e.g. 20241207-153012."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run(output_dir: Path, name: str | None) -> Path:
    """A new, empty folder for a run named ``name`` (default: when it starts)."""
    check_writable(output_dir)
    if name is not None:
        folder = Path(output_dir, RUNS, name)
        if folder.exists() and any(folder.iterdir()):
            raise UsageError(
                f"--run {name}: {folder} holds a run already; continue it with "
                "--resume, or name another run"
            )
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    # Two runs started within the same second get -2, -3, ... after the time.
    base, number = new_run_name(), 1
    while True:
        folder = Path(output_dir, RUNS, base if number == 1 else f"{base}-{number}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            number += 1


def check_writable(output_dir: Path) -> None:
    """Raise UsageError, with one line, unless files can be written in ``output_dir``."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise UsageError(
            f"--output_dir {output_dir}: cannot write there ({error.strerror or error}); "
            "pass a folder you can write to"
        ) from None
