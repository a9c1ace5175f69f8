"""State dicts per epoch, and the resumable checkpoint.

    data/state_dict_eorig_{date}.pt    weights before training
    data/state_dict_e{epoch}_{date}.pt weights after each epoch (0-based)
    data/checkpoint_{date}.pt          everything needed to resume: after the last epoch,
                                       or mid-epoch (--save_every, SIGTERM, Ctrl-C)
    data/run_info_{date}.json          what the weights are: the model's settings, the
                                       best epoch so far; serving reads it

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


def state_dict_path(data_dir: Path, epoch: int | str, data_date: str) -> Path:
    return data_file(data_dir, f"state_dict_e{epoch}", data_date)


def save_state_dict(model: nn.Module, data_dir: Path, epoch: int | str, data_date: str) -> Path:
    path = state_dict_path(data_dir, epoch, data_date)
    remove_leftovers(path)
    return save_torch(unwrap(model).state_dict(), path)


def load_state_dict(data_dir: Path, epoch: int | str, data_date: str, device="cpu") -> dict:
    return load_torch(state_dict_path(data_dir, epoch, data_date), device)


def run_info_path(data_dir: Path, data_date: str) -> Path:
    return data_file(data_dir, "run_info", data_date, ".json")


def save_run_info(data_dir: Path, data_date: str, info: dict) -> Path:
    """Write what a later step needs to rebuild the trained model, e.g.
    {"best_epoch": 2, "bert_type": ..., "max_length": 128, "label_names": [...]}."""
    text = json.dumps(info, indent=2) + "\n"
    path = run_info_path(data_dir, data_date)
    remove_leftovers(path)
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def load_run_info(data_dir: Path, data_date: str) -> dict:
    path = run_info_path(data_dir, data_date)
    if not path.is_file():
        raise UsageError(
            f"no {path.name} in {data_dir}: nothing was trained on the data of "
            f"{data_date} there; train first, or pass its --data_date"
        )
    return json.loads(path.read_text())


def checkpoint_path(data_dir: Path, data_date: str) -> Path:
    return data_file(data_dir, "checkpoint", data_date)


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
) -> None:
    """Everything that decides what happens after ``step`` optimizer steps of
    ``epoch``: ``learner_state`` (the model's, optimizers', schedulers' and
    scaler's state dicts) and the place; ``step == steps_per_epoch`` once the epoch
    is over and in ``metrics``. ``epoch_loss`` is (sum of losses x rows, rows) of
    the epoch so far, over all ranks. Randomness needs no state: each epoch's
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
        },
    )


def resumes(resume: str | None, path: Path) -> bool:
    """Whether --resume continues from the checkpoint at ``path``: always, or
    (--resume auto) when there is one."""
    return resume == "always" or (resume == "auto" and path.is_file())


def load_checkpoint(
    path: Path, device: torch.device | str, epochs: int, steps_per_epoch: int | None = None
) -> dict:
    """The checkpoint at ``path``, checked to belong to an ``epochs``-epoch run with
    ``steps_per_epoch`` optimizer steps per epoch (when given): the learning-rate
    schedule was laid out for that many steps in all."""
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
    # Checkpoints of quikgen 0.1 were written after whole epochs only.
    checkpoint.setdefault("step", checkpoint.get("steps_per_epoch"))
    checkpoint.setdefault("epoch_loss", [0.0, 0.0])
    return checkpoint
