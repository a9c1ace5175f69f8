"""In-memory batches of token ids, grouped by length and padded per batch.

Each split lives in memory as the token ids of all texts end to end, with
offsets. An epoch shuffles the rows, sorts them by length within windows of
a few batches and cuts batches from that: texts of one batch have similar
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


def pad_batch(encoded: dict[str, torch.Tensor], rows: torch.Tensor,
              width: int) -> dict[str, torch.Tensor]:
    """Texts ``rows`` as input_ids and attention_mask padded to ``width`` tokens (their
    longest), and labels."""
    starts, ends = encoded["offsets"][rows], encoded["offsets"][rows + 1]
    positions = starts[:, None] + torch.arange(width, device=starts.device)[None, :]
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
            window_batches: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``indices``, each padded to its own longest text.

    Training (``shuffle_seed`` given): the shuffled ``indices`` are cut into windows
    of ``window_batches`` batches, each window is sorted by length and cut into
    batches, and the batch order is shuffled. Evaluation: all sorted, least padding.

    Why windows of only 8 batches: the more texts sorted together, the more each
    batch holds texts of one length, and such batches are not random samples.
    Where length goes with the label they hold one label; even where it does not,
    one epoch of fine-tuning learns less from them (all-MiniLM-L6-v2 on 3,000
    clothing reviews, seed 0: test macro-F1 0.55 with windows of 50 batches, 0.82
    with 8 and with no grouping at all). Windows of 8 still keep most of the speed:
    91% of the padded tokens there are text, against 60% for random batches and
    98% for windows of 50 (BENCHMARKS.md). Cutting the windows at random offsets
    changes nothing: the rows are shuffled anew every epoch.
    """
    # Batches are planned on the CPU: reading a length off the GPU would make the
    # CPU wait for it before every batch.
    indices = indices.cpu()
    lengths = (encoded["offsets"][1:] - encoded["offsets"][:-1]).cpu()
    window = batch_size * window_batches if shuffle_seed is not None else len(indices)
    groups = []
    for start in range(0, len(indices), max(window, 1)):
        chunk = indices[start:start + window]
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        groups.extend(chunk.split(batch_size))
    if shuffle_seed is not None:
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(shuffle_seed))
        groups = [groups[i] for i in order]
    device = encoded["labels"].device
    for rows in groups:
        yield pad_batch(encoded, rows.to(device), int(lengths[rows].max()))


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


def oversampled_rows(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Row indices where every label's rows are drawn again, at random, until it has
    as many as the commonest label (imbalanced-learn's RandomOverSampler)."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    counts = torch.bincount(labels)
    rows = []
    for label in counts.nonzero().flatten().tolist():
        own = (labels == label).nonzero().flatten()
        extra = own[torch.randint(len(own), (int(counts.max()) - len(own),), generator=generator)]
        rows += [own, extra]
    return torch.cat(rows)
