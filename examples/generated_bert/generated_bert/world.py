"""The world one training process lives in: its device, its rank among the
processes of the job, and the collectives they call together.

``joined_world(gpu)`` is where the process group is created and destroyed: it
joins the group when this process is one of several (the launcher, torchrun or
Ray Train set RANK and WORLD_SIZE), yields a ``World``, and leaves the group at the
end, also when training raised, so that a failed rank leaves no peer waiting.
Inside ``train`` the loop only asks ``world.is_ddp`` and ``world.is_logger``.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int  # rank among this machine's processes
    world_size: int
    device: torch.device

    @property
    def is_ddp(self) -> bool:
        return self.world_size > 1

    @property
    def is_logger(self) -> bool:
        # One process prints, draws the progress bar and writes files.
        return self.rank == 0


def torchrun_store(timeout: timedelta) -> dist.Store | None:
    """Under torchrun, the store the ranks meet in, with keys of their own per
    restart (None elsewhere: the default env:// store serves). torchrun keeps one
    store across --max-restarts, so a restarted rank would otherwise read the
    address a dead rank of the previous attempt left there (pytorch#135712)."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    hosted_by_torchrun = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=not hosted_by_torchrun and os.environ["RANK"] == "0",
        timeout=timeout,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"restart_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


@contextmanager
def joined_world(gpu: int | None):
    """The World of this process, on ``gpu`` (an index) or on the CPU (None)."""
    device = torch.device("cuda", gpu) if gpu is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 for fp32 matmuls on Ampere and newer: several times faster, and
        # precise enough to train with.
        torch.set_float32_matmul_precision("high")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cpu" and local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # CPU processes on one machine share its cores; oversubscribing them is slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))

    # Ray Train creates the group before it calls the training function; then it
    # is Ray's to destroy.
    creates_group = world_size > 1 and not dist.is_initialized()
    if creates_group:
        # Reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE from the environment.
        # The timeout bounds how long ranks wait in a collective: long enough for
        # what rank 0 does alone meanwhile (tokenizing, writing checkpoints, uploads).
        timeout = timedelta(minutes=30)
        store = torchrun_store(timeout)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
            **(
                {"store": store, "rank": int(os.environ["RANK"]), "world_size": world_size}
                if store
                else {}
            ),
        )
    try:
        yield World(
            rank=dist.get_rank() if dist.is_initialized() else 0,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=dist.get_world_size() if dist.is_initialized() else 1,
            device=device,
        )
        if creates_group:
            # Rank 0 finishes last (the test report, the files): the others wait for
            # it, so that no rank closes its connections while rank 0 still has them.
            dist.barrier()
    finally:
        if creates_group and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def first_on_each_node(world: World):
    """Run the block on each node's first process, then on the others: one process
    per machine fills a cache (tokenized data, downloads) that its neighbours then
    read, with or without a filesystem shared between machines."""
    if world.is_ddp and world.local_rank != 0:
        dist.barrier()
    yield
    if world.is_ddp and world.local_rank == 0:
        dist.barrier()


def from_logger(value, world: World):
    """Rank 0's ``value`` (any object pickle can carry) on every rank."""
    if not world.is_ddp:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=world.device)
    return box[0]


def wait_for_every_rank(world: World) -> None:
    """Return once every rank has called this."""
    if world.is_ddp:
        dist.barrier()


def sum_across_ranks(values: list[torch.Tensor], world: World) -> list[float]:
    """Each of ``values`` (one-element tensors) summed over all ranks."""
    both = torch.stack([value.detach().double().reshape(()) for value in values]).to(world.device)
    if world.is_ddp:
        dist.all_reduce(both)
    return both.tolist()


def average_across_ranks(total: torch.Tensor, count: torch.Tensor, world: World) -> float:
    """sum(total) / sum(count) over all ranks: a mean weighted by each rank's samples."""
    total, count = sum_across_ranks([total, count], world)
    return total / count


def min_across_ranks(value: torch.Tensor | int, world: World) -> int:
    """The smallest of every rank's ``value`` (an int or a one-element tensor)."""
    return _reduced_int(value, world, dist.ReduceOp.MIN)


def max_across_ranks(value: torch.Tensor | int, world: World) -> int:
    """The largest of every rank's ``value`` (an int or a one-element tensor)."""
    return _reduced_int(value, world, dist.ReduceOp.MAX)


def _reduced_int(value: torch.Tensor | int, world: World, op) -> int:
    tensor = torch.as_tensor(value).detach().reshape(1).to(world.device, torch.int64)
    if world.is_ddp:
        dist.all_reduce(tensor, op=op)
    return int(tensor.item())


def broadcast_from_logger(tensors: dict[str, torch.Tensor], world: World) -> dict:
    """Rank 0's ``tensors`` on every rank, received in place into the other ranks'
    tensors of the same names and shapes (e.g. their model's state_dict())."""
    if world.is_ddp:
        for tensor in tensors.values():
            dist.broadcast(tensor, src=0)
    return tensors


def average_gradients(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's communication hook: every rank's gradients averaged, as DDP does by
    itself, and the sparse ones of embedding tables (``sparse=True``) too. NCCL
    cannot all-reduce a sparse tensor (gloo can), so each rank's rows are gathered
    instead: a sparse tensor with every rank's rows is the sum of the gradients.
    Only the rows the batches looked up travel, not whole tables."""
    gradient = bucket.buffer()
    if not gradient.is_sparse:
        return allreduce_hook(state, bucket)
    gradient = gradient.coalesce()
    indices, values = gradient.indices(), gradient.values()
    # Ranks looked up different numbers of rows: pad each to the most, then cut.
    counts = _gathered(torch.tensor([indices.shape[1]], device=values.device))
    most = int(counts.max())
    padded_indices = indices.new_zeros(indices.shape[0], most)
    padded_indices[:, : indices.shape[1]] = indices
    padded_values = values.new_zeros(most, *values.shape[1:])
    padded_values[: len(values)] = values
    all_indices = _gathered(padded_indices.T)
    all_values = _gathered(padded_values)
    # Rank r's rows start at r * most in what was gathered; its first count are real.
    rows = [torch.arange(count) + rank * most for rank, count in enumerate(counts.tolist())]
    rows = torch.cat(rows).to(values.device)
    mean = torch.sparse_coo_tensor(
        all_indices[rows].T, all_values[rows] / dist.get_world_size(), gradient.shape
    )
    future = torch.futures.Future()
    future.set_result(mean.coalesce())
    return future


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (all the same shape), stacked along the first dimension."""
    gathered = tensor.new_empty(dist.get_world_size() * tensor.shape[0], *tensor.shape[1:])
    dist.all_gather_into_tensor(gathered, tensor.contiguous())
    return gathered
