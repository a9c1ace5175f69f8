"""Starting the training processes: what ``main.py`` calls.

``launch(fn, ...)`` runs ``fn(world)`` once per process of this machine, each
inside ``joined_world`` (world.py); main.py passes ``partial(train, args)``:

    python main.py                    one process (a GPU if one is visible)
    python main.py --gpus 4           four processes, one per GPU, NCCL
    python main.py --procs 2          two CPU processes, gloo
    torchrun --nproc-per-node 4 main.py   torchrun started them: one per call
"""

import os
import socket
import sys

import torch
import torch.multiprocessing as mp

from .args import UsageError
from .stopping import STOP_SIGNALS, Stopped, signals_forwarded, signals_recorded
from .world import joined_world


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
        print(
            f"warning: --gpus {requested} asked for but no GPU is visible; training on the CPU",
            file=sys.stderr,
        )
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


def run_in_world(fn, gpu: int | None) -> None:
    with signals_recorded(), joined_world(gpu) as world:
        fn(world)


def launch(
    fn,
    *,
    gpus: int | None,
    procs: int,
    nodes: int,
    nr: int,
    master_addr: str | None,
    master_port: int | None,
) -> None:
    """Run fn(world) once per process of this node (the --gpus, --procs, --nodes,
    --nr, --master_addr and --master_port flags)."""
    if launched_by_torchrun():
        # torchrun already started one process per rank and set RANK, WORLD_SIZE, ...
        local_rank = int(os.environ["LOCAL_RANK"])
        run_in_world(fn, local_rank if gpus_to_use(gpus) > 0 else None)
        return

    gpus = gpus_to_use(gpus)
    procs_per_node = gpus or procs
    if procs_per_node * nodes == 1:
        run_in_world(fn, 0 if gpus else None)
        return

    if nodes > 1 and master_port is None:
        raise LaunchError(
            "--nodes > 1 needs --master_port (and --master_addr of node 0) on every node"
        )
    if nr >= nodes:
        raise LaunchError(f"--nr {nr} must be below --nodes {nodes}")
    if nr > 0 and master_addr is None:
        raise LaunchError(
            f"--nr {nr} runs on another machine than node 0: pass "
            "--master_addr with node 0's address"
        )
    # One rendezvous for the whole job, chosen here, before any rank starts.
    os.environ["MASTER_ADDR"] = master_addr or "127.0.0.1"
    os.environ["MASTER_PORT"] = str(master_port or free_port())
    processes = mp.spawn(
        _spawned_process,
        args=(fn, nr, procs_per_node, nodes, gpus > 0),
        nprocs=procs_per_node,
        join=False,
    )
    try:
        # SIGTERM or Ctrl-C here goes on to every process, which checkpoints and stops.
        with signals_forwarded([process.pid for process in processes.processes]):
            while not processes.join():
                pass
    except mp.ProcessExitedException as error:
        if error.exit_code in [128 + number for number in STOP_SIGNALS]:
            raise Stopped(error.exit_code - 128) from None  # rank 0 said where it saved
        # spawn stops the other processes as soon as one fails. One that raised
        # printed why; one killed by a signal (the OOM killer, kill -9) could not.
        how = (
            f"was killed by {error.signal_name}"
            if error.signal_name
            else f"exited with code {error.exit_code}"
        )
        raise LaunchError(
            f"training process {error.error_index} {how}; the others were stopped"
        ) from None


def _spawned_process(
    local_rank: int, fn, nr: int, procs_per_node: int, nodes: int, use_gpus: bool
) -> None:
    # The same variables torchrun sets, so joined_world has one code path for both.
    os.environ.update(
        RANK=str(nr * procs_per_node + local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(procs_per_node * nodes),
        LOCAL_WORLD_SIZE=str(procs_per_node),
    )
    try:
        run_in_world(fn, local_rank if use_gpus else None)
    except UsageError as error:
        sys.exit(f"error: {error}")
    except Stopped as stopped:
        if str(stopped):
            print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
