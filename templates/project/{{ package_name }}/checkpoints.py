"""State dicts per epoch, and the resumable checkpoint.

    data/state_dict_eorig_{date}.pt    weights before training
    data/state_dict_e{epoch}_{date}.pt weights after each epoch (0-based)
    data/checkpoint_{date}.pt          everything needed to resume after the last epoch

State dicts hold the bare model's weights: no ``module.`` (DDP) or ``_orig_mod.``
(torch.compile) prefixes, so they load into a freshly built model.
"""

from pathlib import Path

from torch import nn

from .files import data_file, load_torch, save_torch


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def state_dict_path(data_dir: Path, epoch: int | str, data_date: str) -> Path:
    return data_file(data_dir, f"state_dict_e{epoch}", data_date)


def save_state_dict(model: nn.Module, data_dir: Path, epoch: int | str, data_date: str) -> Path:
    return save_torch(unwrap(model).state_dict(), state_dict_path(data_dir, epoch, data_date))


def load_state_dict(data_dir: Path, epoch: int | str, data_date: str, device="cpu") -> dict:
    return load_torch(state_dict_path(data_dir, epoch, data_date), device)
