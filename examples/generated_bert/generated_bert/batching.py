"""Batches cut in memory from a permutation of row indices, and sharded by rank.

A split lives on the device as a dict of tensors. A batch is ``{key:
tensor[indices]}``: no per-sample Python, no collate, no workers. This is several
times faster than a DataLoader over a TensorDataset. Tasks whose rows are not
one tensor row each (texts stored end to end) cut their own batches (task.py).
"""

import math
from collections.abc import Iterator

import torch

from .world import World


def shard(order: torch.Tensor, world: World, pad: bool) -> torch.Tensor:
    """This rank's part of ``order``: positions rank, rank + world_size, ...

    This is how DistributedSampler interleaves, so W ranks with batch b see
    exactly the rows one process sees with batch W * b. With ``pad``, the order
    wraps around until it divides evenly, so every rank takes the same number of
    steps (a rank with one step fewer would leave the others waiting forever).
    """
    if pad and len(order) % world.world_size:
        padded = math.ceil(len(order) / world.world_size) * world.world_size
        order = order.repeat(math.ceil(padded / len(order)))[:padded]
    return order[world.rank :: world.world_size]


def to_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``indices`` on ``device``. To a GPU in one copy from pinned memory, which the
    CPU does not wait for: from pageable memory, the CPU would wait for the GPU to
    finish everything queued before it."""
    if device.type != "cuda":
        return indices.to(device)
    return indices.pin_memory().to(device, non_blocking=True)


def index_batches(
    tensors: dict[str, torch.Tensor], indices: torch.Tensor, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of rows ``indices`` of equal-length ``tensors``, in that order."""
    indices = to_device(indices, next(iter(tensors.values())).device)
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        yield {key: tensor[rows] for key, tensor in tensors.items()}


def groups_of(items, size: int):
    """[a, b, c, d, e], 2 -> [a, b], [c, d], [e]: micro-batches of one optimizer step."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
