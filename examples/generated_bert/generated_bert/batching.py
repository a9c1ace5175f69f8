"""In-memory batches of token ids, grouped by length and padded per batch.

Each split lives in memory as the token ids of all texts end to end, with
offsets. An epoch shuffles the rows, sorts them by length within windows of
many batches and cuts batches from that: texts of one batch have similar
lengths, so padding each batch to its own longest text wastes little. This is
about twice as fast as padding every text to --max_length.
"""

import math
from collections.abc import Iterator

import torch

from .world import World


def num_rows(encoded: dict[str, torch.Tensor]) -> int:
    return len(encoded["labels"])


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
    return order[world.rank::world.world_size]


def pad_batch(encoded: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Texts ``rows`` as input_ids and attention_mask padded to their longest, and labels."""
    starts, ends = encoded["offsets"][rows], encoded["offsets"][rows + 1]
    width = torch.arange(int((ends - starts).max()), device=starts.device)
    positions = starts[:, None] + width[None, :]
    attention_mask = positions < ends[:, None]
    last = len(encoded["input_ids"]) - 1
    input_ids = encoded["input_ids"][positions.clamp(max=last)]
    return {
        "input_ids": torch.where(attention_mask, input_ids, encoded["pad_id"]),
        "attention_mask": attention_mask.long(),
        "labels": encoded["labels"][rows],
    }


def batches(encoded: dict[str, torch.Tensor], indices: torch.Tensor, batch_size: int,
            shuffle_seed: int | None = None,
            window_batches: int = 50) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``indices`` grouped by length. With ``shuffle_seed``, lengths are
    sorted within windows of ``window_batches`` batches and the batch order is
    shuffled; without, everything is sorted (evaluation)."""
    indices = indices.to(encoded["labels"].device)
    lengths = encoded["offsets"][1:] - encoded["offsets"][:-1]
    window = batch_size * window_batches if shuffle_seed is not None else len(indices)
    groups = []
    for start in range(0, len(indices), max(window, 1)):
        chunk = indices[start:start + window]
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        groups.extend(chunk.split(batch_size))
    if shuffle_seed is not None:
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(shuffle_seed))
        groups = [groups[i] for i in order]
    for rows in groups:
        yield pad_batch(encoded, rows)


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
