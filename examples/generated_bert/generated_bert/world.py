"""Processes, devices and ranks.

``launch`` starts as many processes as the arguments ask for; each one calls
``train(args, gpu)``. Inside ``train``, ``setup_world`` decides everything
distributed once and returns a ``World``; the loop then only asks
``world.is_ddp`` and ``world.is_logger``.

The same ``train`` runs under every launcher:
    python main.py                    one process (a GPU if one is visible)
    python main.py --gpus 4           four processes, one per GPU, NCCL
    python main.py --procs 2          two CPU processes, gloo
    torchrun --nproc-per-node 4 main.py
    Ray Train workers                 (the process group already exists)
"""

import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .args import UsageError


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool  # False when a launcher such as Ray Train created it

    @property
    def is_ddp(self) -> bool:
        return self.world_size > 1

    @property
    def is_logger(self) -> bool:
        # One process prints, draws the progress bar and writes files.
        return self.rank == 0


class LaunchError(UsageError):
    """The arguments ask for processes or devices this machine cannot give."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def gpus_to_use(requested: int | None) -> int:
    """How many GPUs this node trains on: all asked for, or 0 for the CPU."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is None:  # not given: one GPU if there is one
        return min(visible, 1)
    if requested > 0 and visible == 0:
        print(f"warning: --gpus {requested} asked for but no GPU is visible; training on the CPU",
              file=sys.stderr)
        return 0
    if requested > visible:
        raise LaunchError(
            f"--gpus {requested} asked for but only {visible} GPU(s) are visible; "
            f"use --gpus {visible} or fewer (CUDA_VISIBLE_DEVICES limits what is visible)"
        )
    return requested


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_leaving_no_process_group(train_fn, args, gpu) -> None:
    """train_fn(args, gpu), destroying the process group even when it raises or is
    interrupted, so that a failed rank does not leave its peers waiting."""
    try:
        train_fn(args, gpu)
    finally:
        if dist.is_initialized():  # launch() started it; Ray Train calls train() itself
            dist.destroy_process_group()


def launch(train_fn, args) -> None:
    """Run train_fn(args, gpu) once per process of this node."""
    if launched_by_torchrun():
        # torchrun already started one process per rank and set RANK, WORLD_SIZE, ...
        local_rank = int(os.environ["LOCAL_RANK"])
        gpu = local_rank if gpus_to_use(args.gpus) > 0 else None
        run_leaving_no_process_group(train_fn, args, gpu)
        return

    gpus = gpus_to_use(args.gpus)
    procs_per_node = gpus or args.procs
    world_size = procs_per_node * args.nodes
    if world_size == 1:
        run_leaving_no_process_group(train_fn, args, 0 if gpus else None)
        return

    if args.nodes > 1 and args.master_port is None:
        raise LaunchError(
            "--nodes > 1 needs --master_port (and --master_addr of node 0) on every node"
        )
    if args.nr >= args.nodes:
        raise LaunchError(f"--nr {args.nr} must be below --nodes {args.nodes}")
    if args.nr > 0 and args.master_addr is None:
        raise LaunchError(f"--nr {args.nr} runs on another machine than node 0: pass "
                          "--master_addr with node 0's address")
    # One rendezvous for the whole job, chosen here, before any rank starts.
    os.environ["MASTER_ADDR"] = args.master_addr or "127.0.0.1"
    os.environ["MASTER_PORT"] = str(args.master_port or free_port())
    try:
        mp.spawn(_spawned_process, args=(train_fn, args, procs_per_node, gpus > 0),
                 nprocs=procs_per_node)
    except mp.ProcessExitedException as error:
        # spawn stops the other processes as soon as one fails. One that raised
        # printed why; one killed by a signal (the OOM killer, kill -9) could not.
        how = (f"was killed by {error.signal_name}" if error.signal_name
               else f"exited with code {error.exit_code}")
        raise LaunchError(f"training process {error.error_index} {how}; "
                          "the others were stopped") from None


def _spawned_process(local_rank: int, train_fn, args, procs_per_node: int, use_gpus: bool) -> None:
    # The same variables torchrun sets, so setup_world has one code path for both.
    os.environ.update(
        RANK=str(args.nr * procs_per_node + local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(procs_per_node * args.nodes),
        LOCAL_WORLD_SIZE=str(procs_per_node),
    )
    try:
        run_leaving_no_process_group(train_fn, args, local_rank if use_gpus else None)
    except UsageError as error:
        sys.exit(f"error: {error}")


def setup_world(gpu: int | None) -> World:
    """Join the process group if this process is one of several, and pick the device."""
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

    owns_process_group = world_size > 1 and not dist.is_initialized()
    if owns_process_group:
        # Reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE from the environment.
        # The timeout bounds how long ranks wait in a collective: long enough for
        # what rank 0 does alone meanwhile (tokenizing, writing checkpoints, uploads).
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return World(
        rank=dist.get_rank() if dist.is_initialized() else 0,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=dist.get_world_size() if dist.is_initialized() else 1,
        device=device,
        owns_process_group=owns_process_group,
    )


def cleanup_world(world: World) -> None:
    if world.owns_process_group and dist.is_initialized():
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


def average_across_ranks(total: torch.Tensor, count: torch.Tensor, world: World) -> float:
    """sum(total) / sum(count) over all ranks: a mean weighted by each rank's samples."""
    both = torch.stack([total.detach().double(), count.detach().double()]).to(world.device)
    if world.is_ddp:
        dist.all_reduce(both)
    return (both[0] / both[1]).item()


def min_across_ranks(value: torch.Tensor, world: World) -> int:
    """The smallest of every rank's ``value`` (a one-element tensor)."""
    value = value.detach().reshape(1).to(world.device, torch.int64)
    if world.is_ddp:
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def broadcast_from_logger(tensors: dict[str, torch.Tensor], world: World) -> dict:
    """Rank 0's ``tensors`` on every rank, received in place into the other ranks'
    tensors of the same names and shapes (e.g. their model's state_dict())."""
    if world.is_ddp:
        for tensor in tensors.values():
            dist.broadcast(tensor, src=0)
    return tensors
