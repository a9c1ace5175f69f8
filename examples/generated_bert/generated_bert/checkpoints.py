"""State dicts per epoch, and the resumable checkpoint, in a run's folder (runs.py):

    state_dict_eorig_{date}.pt    weights before training
    state_dict_e{epoch}_{date}.pt weights after each epoch (0-based)
    checkpoint_{date}.pt          everything needed to resume: after the last epoch,
                                  or mid-epoch (--save_every, SIGTERM, Ctrl-C)
    run_info_{date}.json          what the weights are: the model's settings, the best
                                  epoch so far, when the run started, whether it has
                                  finished; serving reads it

State dicts hold the bare model's weights: no ``module.`` (DDP) or ``_orig_mod.``
(torch.compile) prefixes, so they load into a freshly built model.
"""

import json
import threading
import time
from pathlib import Path

import torch
from torch import nn

from .args import UsageError
from .files import data_file, load_torch, remove_leftovers, save_torch, write_atomically


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def state_dict_path(folder: Path, epoch: int | str, data_date: str) -> Path:
    return data_file(folder, f"state_dict_e{epoch}", data_date)


def save_state_dict(model: nn.Module, folder: Path, epoch: int | str, data_date: str) -> Path:
    path = state_dict_path(folder, epoch, data_date)
    remove_leftovers(path)
    return save_torch(unwrap(model).state_dict(), path)


def load_state_dict(folder: Path, epoch: int | str, data_date: str, device="cpu") -> dict:
    return load_torch(state_dict_path(folder, epoch, data_date), device)


def run_info_path(folder: Path, data_date: str) -> Path:
    return data_file(folder, "run_info", data_date, ".json")


def save_run_info(folder: Path, data_date: str, info: dict) -> Path:
    """Write what a later step needs to rebuild the trained model, e.g.
    {"best_epoch": 2, "bert_type": ..., "max_length": 128, "label_names": [...]}."""
    text = json.dumps(info, indent=2) + "\n"
    path = run_info_path(folder, data_date)
    remove_leftovers(path)
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def run_record(folder: Path, data_date: str) -> dict | None:
    """The run record (run_info) in ``folder`` for the data of ``data_date``, or None."""
    try:
        return json.loads(run_info_path(folder, data_date).read_text())
    except (OSError, ValueError):  # none, or not JSON (a file put there by hand)
        return None


def load_run_info(folder: Path, data_date: str) -> dict:
    """The run record in ``folder``; one line of error where there is none."""
    record = run_record(folder, data_date)
    if record is None:
        raise UsageError(
            f"no {run_info_path(folder, data_date).name} in {folder}: no record of what "
            "these weights were trained with; use a run this project trained (--run)"
        )
    return record


def checkpoint_path(folder: Path, data_date: str) -> Path:
    return data_file(folder, "checkpoint", data_date)


class BackgroundWriter:
    """Writes checkpoints on a thread of its own, one at a time, so that training
    goes on while a large one is written (a catalogue of 200,000 rows makes one of
    170 MB, weights and Adam's two moments).

    ``write(path, checkpoint)`` copies the checkpoint's tensors to the CPU first:
    the copy is what is written, as the next steps change the originals. It waits
    for the previous write to land, so at most one is under way. ``wait()`` returns
    once the last write has landed, and raises its error if it failed. A process
    killed mid-write leaves the previous checkpoint whole (files.write_atomically).
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = time.monotonic()

    def seconds_since_write(self) -> float:
        """Since the last write started, or since this writer was made."""
        return time.monotonic() - self._started

    def write(self, path: Path, checkpoint: dict) -> None:
        self.wait()
        copy = _on_cpu(checkpoint)
        remove_leftovers(path)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._save, args=(copy, path), daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _save(self, checkpoint: dict, path: Path) -> None:
        try:
            save_torch(checkpoint, path)
        except BaseException as error:  # raised in the training thread by wait()
            self._error = error


def _on_cpu(value):
    """``value`` with every tensor in it copied to the CPU, in dicts and lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def save_checkpoint(
    writer: BackgroundWriter,
    path: Path,
    learner_state: dict,
    *,
    epoch: int,
    step: int,
    epochs: int,
    steps_per_epoch: int,
    metrics: list[dict],
    epoch_loss: tuple[float, float] = (0.0, 0.0),
    settings: dict | None = None,
) -> None:
    """Everything that decides what happens after ``step`` optimizer steps of
    ``epoch``: ``learner_state`` (the model's, optimizers', schedulers' and
    scaler's state dicts) and the place; ``step == steps_per_epoch`` once the epoch
    is over and in ``metrics``. ``epoch_loss`` is (sum of losses x rows, rows) of
    the epoch so far, over all ranks; ``settings`` the flags --resume compares
    (train.RecordedSettings). Randomness needs no state: each epoch's
    shuffle is seeded by --seed and the epoch, and each step's dropout by --seed,
    the epoch, the step and the rank (see train.py). Written by ``writer``, in the
    background."""
    writer.write(
        path,
        {
            **learner_state,
            "epoch": epoch,
            "step": step,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "metrics": metrics,
            "epoch_loss": list(epoch_loss),
            "settings": settings,
        },
    )


def load_checkpoint(
    path: Path,
    device: torch.device | str,
    epochs: int,
    steps_per_epoch: int | None = None,
    settings: dict | None = None,
) -> dict:
    """The checkpoint at ``path``, checked to belong to an ``epochs``-epoch run with
    ``steps_per_epoch`` optimizer steps per epoch (when given): the learning-rate
    schedule was laid out for that many steps in all. With ``settings``
    (train.RecordedSettings), the flags that shape the model and the data must be the
    checkpoint's too."""
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}; train without --resume first")
    try:
        checkpoint = load_torch(path, device)
    except Exception as error:  # a truncated or foreign file: torch raises many kinds
        raise UsageError(
            f"--resume: {path} is not a readable checkpoint ({type(error).__name__}); "
            "delete it and train without --resume"
        ) from None
    if checkpoint.get("epochs") != epochs:
        raise UsageError(
            f"--resume: {path} is from a {checkpoint.get('epochs')}-epoch run; "
            f"pass --epochs {checkpoint.get('epochs')} to finish that run"
        )
    if steps_per_epoch is not None and checkpoint.get("steps_per_epoch") != steps_per_epoch:
        raise UsageError(
            f"--resume: {path} took {checkpoint.get('steps_per_epoch')} steps per epoch, this "
            f"run would take {steps_per_epoch}; resume with that run's --bs, --accumulate and "
            "number of processes"
        )
    if "optimizers" not in checkpoint:
        raise UsageError(
            f"--resume: {path} was written by an older train.py (one optimizer); "
            "finish that run with the code that started it, or train without --resume"
        )
    changed = differing(checkpoint, settings or {}, "fixed")
    if changed:
        was = ", ".join(f"--{flag} {old} (now {new})" for flag, old, new in changed)
        raise UsageError(
            f"--resume: {path.parent} was trained with {was}; resume with its values, "
            "or train without --resume to start a new run"
        )
    # Checkpoints of quikgen 0.1 were written after whole epochs only.
    checkpoint.setdefault("step", checkpoint.get("steps_per_epoch"))
    checkpoint.setdefault("epoch_loss", [0.0, 0.0])
    return checkpoint


def changed_optimizer_settings(checkpoint: dict, settings: dict) -> str | None:
    """A line saying which optimizer flags differ from those of the run that
    ``checkpoint`` continues, whose optimizer state and schedule carry on; or None."""
    changed = differing(checkpoint, settings, "optimizer")
    if not changed:
        return None
    given = ", ".join(f"--{flag} {new}" for flag, _, new in changed)
    kept = ", ".join(f"--{flag} {old}" for flag, old, _ in changed)
    return (
        f"--resume: {given} ignored: the run goes on with its own optimizer state and "
        f"schedule ({kept}); train without --resume to start a run with them"
    )


def differing(checkpoint: dict, settings: dict, group: str) -> list[tuple[str, str, str]]:
    """(flag, the checkpoint's value, this run's) for each flag of ``group`` (see
    train.RecordedSettings) whose values differ, as they are typed (--betas 0.9 0.999).
    A checkpoint written before settings were recorded differs in none."""
    recorded = (checkpoint.get("settings") or {}).get(group, {})
    current = settings.get(group, {})
    typed = {
        flag: (flag_text(recorded[flag]), flag_text(current[flag]))
        for flag in recorded.keys() & current.keys()
    }
    return [(flag, old, new) for flag, (old, new) in sorted(typed.items()) if old != new]


def flag_text(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)
