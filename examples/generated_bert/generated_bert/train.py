"""train(args, world): the whole training job, top to bottom.

    train()            task, model, optimizers and schedules, precision
      resume_or_start  a checkpoint's weights and place, or the untrained weights saved
      for each epoch until --epochs, or --patience epochs without a better valid_loss:
        train_epoch    the optimizer steps; a mid-epoch checkpoint when one is due
        evaluate       the valid loss, then save_epoch: state dict, checkpoint, run record
      test_and_report  the best epoch's weights on the test set; the table and the files

What differs between kinds of project (data, model, loss, test report) is task.py's;
the world (device, rank, collectives) is world.py's; where runs are tracked is
tracking.py's. A search hears of each epoch through ``on_epoch``.
"""

import inspect
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from itertools import islice
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .args import FlagValues, Interval, UsageError
from .batching import groups_of, shard
from .checkpoints import (
    BackgroundWriter,
    changed_optimizer_settings,
    checkpoint_path,
    load_checkpoint,
    load_state_dict,
    run_record,
    save_checkpoint,
    save_run_info,
    save_state_dict,
    unwrap,
)
from .files import data_file
from .metrics import (
    EpochTimer,
    SmoothedLoss,
    best_epoch,
    epochs_since_best,
    print_metrics_table,
    save_loss_curve,
    save_metrics_table,
)
from .runs import new_run, run_to_resume
from .stopping import Stopped, received, stopped_at
from .task import Task, TaskSettings
from .tracking import TrackedRun, TrackingSettings, run_logger
from .world import (
    World,
    average_across_ranks,
    average_gradients,
    broadcast_from_logger,
    from_logger,
    max_across_ranks,
    min_across_ranks,
    sum_across_ranks,
    wait_for_every_rank,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train(
    args,
    world: World,
    tracked_run: TrackedRun | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resume: str | None = None,
) -> list[dict]:
    """Train as the flags ``args`` say, in this process of ``world``; return the
    per-epoch metrics. ``tracked_run``: the job's run (rank 0 logs into it);
    ``on_epoch``: called with each epoch's row of metrics on every rank;
    ``resume``: in place of --resume (a job restarted after a failure: "auto")."""
    torch.manual_seed(args.seed)
    # The data on the device, the model, its loss and its test report (task.py).
    task = Task(TaskSettings.pick(vars(args)), args.data_dir, args.data_date, world)
    model = task.build_model().to(world.device)
    train_rows = task.training_rows(args.seed)

    rows_per_rank = math.ceil(len(train_rows) / world.world_size)
    steps_per_epoch = math.ceil(math.ceil(rows_per_rank / args.bs) / args.accumulate)

    # Mixed precision: autocast picks the dtype per op. Only fp16 needs the scaler,
    # which keeps small gradients from flushing to zero; disabled, it is a no-op.
    dtype = autocast_dtype(args.precision, world.device)
    optimizers = build_optimizers(model, args.lr, args.betas, args.eps, args.weight_decay)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = round(args.warmup_ratio * total_steps)
    learner = Learner(
        model,
        optimizers,
        [linear_schedule(optimizer, warmup_steps, total_steps) for optimizer in optimizers],
        torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16),
        partial(torch.autocast, world.device.type, dtype=dtype, enabled=dtype is not None),
    )
    if args.compile:  # here, before any file is written: a model it refuses stops the run
        learner.model = compiled(learner.model)
    run = Run(
        LoopSettings.pick({**vars(args), "resume": resume or args.resume}),
        world,
        task,
        learner,
        train_rows,
        steps_per_epoch,
        run_logger(TrackingSettings.pick(vars(args)), tracked_run if world.is_logger else None),
        RecordedSettings.pick(vars(args)).recorded(task.settings),
    )
    first_epoch, first_step, resumed_loss = resume_or_start(run)
    if world.is_ddp:
        learner.model = distributed(learner.model, world, args.find_unused_parameters)
    if world.is_logger:
        print_plan(run, dtype or torch.float32, first_epoch, first_step)

    for epoch in range(first_epoch, args.epochs):
        # Every rank has the same valid losses, so every rank stops at the same epoch.
        if args.patience and epochs_since_best(run.metrics) >= args.patience:
            if world.is_logger:
                print(
                    f"valid_loss has not improved for {args.patience} epoch(s) since epoch "
                    f"{best_epoch(run.metrics)}: stopping early"
                )
            break
        timer = EpochTimer()
        # A run resumed mid-epoch skips the steps it had taken, and counts their losses.
        start = first_step if epoch == first_epoch else 0
        loss_sum, rows_seen = train_epoch(run, epoch, start, resumed_loss if start else (0, 0))
        # The all-reduces here are also the barrier: every rank has finished the
        # epoch before rank 0 writes its files.
        train_loss = average_across_ranks(loss_sum, rows_seen, world)
        valid_loss = evaluate(learner, task, task.valid_set, args.bs, world)
        run.metrics.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "time": timer.elapsed(),
            }
        )
        save_epoch(run, epoch)
        if on_epoch:  # a search's trial: after the files, as ASHA may end the trial here
            on_epoch({**run.metrics[-1], "world_size": world.world_size})
        # A stop signal during validation or saving: the epoch's checkpoint is whole.
        if epoch + 1 < args.epochs:
            run.stop_if(
                max_across_ranks(received(), world), f"after epoch {epoch + 1}/{args.epochs}"
            )

    run.writer.wait()  # the last checkpoint has landed, or its error is raised here
    test_and_report(run)
    return run.metrics


@dataclass(frozen=True)
class LoopSettings(FlagValues):
    """The flags that the steps of train() read."""

    epochs: int
    seed: int
    bs: int
    accumulate: int
    clip_grad: float
    log_every: int
    save_every: Interval
    resume: str | None
    run: str | None
    output_dir: Path
    data_date: str


@dataclass(frozen=True)
class RecordedSettings(FlagValues):
    """The flags a run's checkpoint records besides the task's, for --resume to
    compare with its own (see ``recorded``)."""

    data_date: str
    warmup_ratio: float
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float

    def recorded(self, task: TaskSettings) -> dict:
        """The settings by kind: "fixed", the flags that shape the model, the data and
        the schedule, which a run cannot change; "optimizer", those its optimizer's
        saved state carries on with."""
        optimizer = {name: getattr(self, name) for name in ("lr", "weight_decay", "betas", "eps")}
        fixed = {"data_date": self.data_date, "warmup_ratio": self.warmup_ratio}
        return {"fixed": {**fixed, **asdict(task)}, "optimizer": optimizer}


@dataclass
class Learner:
    """The model and everything that changes its weights: what a checkpoint holds
    besides the place in the run."""

    model: nn.Module  # wrapped in DistributedDataParallel once it is set up
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler]
    scaler: torch.amp.GradScaler
    autocast: Callable  # autocast() is the context every forward pass runs in

    def step(
        self,
        micro_batches: list[dict],
        task: Task,
        world: World,
        clip_grad: float,
        totals: list[torch.Tensor],
    ) -> torch.Tensor:
        """One optimizer step on ``micro_batches``; returns the step's loss and adds
        each micro-batch's loss x rows and rows to ``totals``, all on the device."""
        step_loss = torch.zeros((), device=world.device)
        for i, batch in enumerate(micro_batches):
            # DDP all-reduces gradients in backward; with accumulation only the
            # last micro-batch of the step needs that, so skip it on the others.
            is_last = i == len(micro_batches) - 1
            with nullcontext() if is_last or not world.is_ddp else self.model.no_sync():
                with self.autocast():
                    loss = task.compute_loss(self.model, batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            step_loss += loss.detach() / len(micro_batches)
            totals[0] += loss.detach() * task.num_rows(batch)
            totals[1] += task.num_rows(batch)

        if clip_grad:
            for optimizer in self.optimizers:  # clip the true gradients, not the scaled ones
                self.scaler.unscale_(optimizer)
            clip_grad_norm(self.model.parameters(), clip_grad)
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)  # skips the step if fp16 gradients overflowed,
        self.scaler.update()  # and then lowers the scale.
        # The schedule moves on every step, a skipped one too: telling them apart would
        # make the CPU wait for the device every step. fp16 skips a few steps of a run,
        # while the scaler finds its scale (nanoGPT and Lightning move on alike).
        for scheduler in self.schedulers:
            scheduler.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return step_loss

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, checkpoint: dict) -> None:
        unwrap(self.model).load_state_dict(checkpoint["model"])
        for optimizer, state in zip(self.optimizers, checkpoint["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        for scheduler, state in zip(self.schedulers, checkpoint["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        # A run without fp16 saved an empty scaler state: resumed under fp16, the
        # scaler starts afresh.
        if checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])


@dataclass
class Run:
    """What every step of train() shares: the flags, this process's world, the task,
    the learner, the tracker, the settings its checkpoint records (RecordedSettings);
    the run's folder once resume_or_start chose it, and the metrics so far."""

    flags: LoopSettings
    world: World
    task: Task
    learner: Learner
    train_rows: torch.Tensor
    steps_per_epoch: int
    tracker: object  # tracking.run_logger's: logs nothing on ranks other than 0
    settings: dict
    folder: Path | None = None  # data/runs/{name}/, see runs.py
    started: str = ""  # when the run first started, ISO 8601
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)  # rank 0's checkpoints
    metrics: list[dict] = field(default_factory=list)

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_path(self.folder, self.flags.data_date)

    def save(self, epoch: int, step: int, epoch_loss=(0.0, 0.0)) -> None:
        """Rank 0 writes the checkpoint after ``step`` steps of ``epoch``, in the background
        (``epoch_loss``: the epoch's sum of losses x rows and rows so far, over all ranks)."""
        if self.world.is_logger:
            save_checkpoint(
                self.writer,
                self.checkpoint_file,
                self.learner.state_dict(),
                epoch=epoch,
                step=step,
                epochs=self.flags.epochs,
                steps_per_epoch=self.steps_per_epoch,
                metrics=self.metrics,
                epoch_loss=epoch_loss,
                settings=self.settings,
            )

    def stop_if(self, signal_number: int, where: str) -> None:
        """Stop every rank on a stop signal that any rank received, once the
        checkpoint is written (``signal_number``: agreed by all ranks, 0 for none)."""
        if signal_number:
            self.writer.wait()
            # The launcher (torchrun, spawn) ends the job once a rank exits, and kills
            # what is left 30 s later: no rank exits before rank 0's checkpoint landed.
            wait_for_every_rank(self.world)
            message = stopped_at(signal_number, where, self.checkpoint_file)
            raise Stopped(signal_number, message if self.world.is_logger else "")

    def timed_save_due(self) -> bool:
        """Whether --save_every's time has passed since the last checkpoint; rank 0's
        clock decides, for every rank (the ranks agree on it, so call it on all)."""
        if not self.flags.save_every.seconds:
            return False
        due = self.writer.seconds_since_write() >= self.flags.save_every.seconds
        return bool(max_across_ranks(self.world.is_logger and due, self.world))


def resume_or_start(run: Run) -> tuple[int, int, tuple[float, float]]:
    """The run's folder, and where training starts: the epoch, the optimizer steps
    of it already taken, and the losses of those steps (sum of losses x rows, rows),
    summed over all ranks when they were saved and carried by rank 0. A fresh run
    saves the untrained weights (state_dict_eorig); either way rank 0 writes the
    run record."""
    flags, world = run.flags, run.world
    start = (0, 0, (0.0, 0.0))
    # Rank 0 decides for the whole job, from its own disk, and sends its decision
    # (or why it cannot go on) to the others: without a filesystem shared between
    # machines, another machine's copy of a run may be missing or older.
    decision = None
    if world.is_logger:
        try:
            decision = chosen_run(run)
        except UsageError as error:
            decision = error
    decision = from_logger(decision, world)
    if isinstance(decision, UsageError):
        raise decision
    run.folder, run.started, checkpoint = decision
    if checkpoint is not None:
        run.learner.load_state_dict(checkpoint)
        run.metrics = checkpoint["metrics"]
        if checkpoint["step"] == run.steps_per_epoch:  # saved after the whole epoch
            start = (checkpoint["epoch"] + 1, 0, (0.0, 0.0))
        else:
            loss = tuple(checkpoint["epoch_loss"]) if world.is_logger else (0.0, 0.0)
            start = (checkpoint["epoch"], checkpoint["step"], loss)
    elif world.is_logger:
        save_state_dict(run.learner.model, run.folder, "orig", flags.data_date)
    if world.is_logger:
        save_run_record(run)
    return start


def chosen_run(run: Run) -> tuple[Path, str, dict | None]:
    """Rank 0's choice of run: its folder, when it first started, and the checkpoint
    to resume from (None: from the start). Says so when the optimizer's flags
    differ from those the checkpoint carries on with."""
    flags = run.flags
    now = datetime.now().isoformat()
    folder, resuming = run_to_resume(flags.output_dir, flags.run, flags.data_date, flags.resume)
    if not resuming:
        return folder or new_run(flags.output_dir, flags.run), now, None
    checkpoint = load_checkpoint(
        checkpoint_path(folder, flags.data_date),
        "cpu",
        flags.epochs,
        run.steps_per_epoch,
        run.settings,
    )
    notice = changed_optimizer_settings(checkpoint, run.settings)
    if notice:
        print(notice)
    return folder, run_record(folder, flags.data_date).get("started", now), checkpoint


def print_plan(run: Run, dtype: torch.dtype, first_epoch: int, first_step: int) -> None:
    flags, world = run.flags, run.world
    per_step = world.world_size * flags.bs * flags.accumulate
    print(
        f"{world.world_size} process(es) x batch {flags.bs} x {flags.accumulate} accumulated = "
        f"{per_step} {run.task.noun} per step, {run.steps_per_epoch} steps per epoch, "
        f"on {world.device}, {dtype}"
    )
    if not first_epoch and not first_step:
        print(f"run {run.folder.name}: its files go to {run.folder}")
    elif first_step:
        print(
            f"resuming in epoch {first_epoch + 1}/{flags.epochs} after step {first_step} "
            f"from {run.checkpoint_file}"
        )
    elif first_epoch:
        print(f"resuming after epoch {first_epoch - 1} from {run.checkpoint_file}")


def train_epoch(
    run: Run, epoch: int, start: int, resumed_loss: tuple[float, float]
) -> list[torch.Tensor]:
    """Epoch ``epoch``'s optimizer steps from step ``start`` on; returns this rank's
    sum of losses x rows and its rows (on the device), ``resumed_loss`` included.
    Checkpoints mid-epoch when --save_every says, and on a stop signal, then stops."""
    flags, world, task = run.flags, run.world, run.task
    run.learner.model.train()
    # A new order every epoch, the same on every rank; each rank takes its shard.
    shuffle = torch.Generator().manual_seed(flags.seed + epoch)
    # int32: at 25 million rows, a permutation takes 100 MB instead of 200.
    order = run.train_rows[
        torch.randperm(len(run.train_rows), generator=shuffle, dtype=torch.int32)
    ]
    micro_batches = task.batches(
        task.train_set, shard(order, world, pad=True), flags.bs, shuffle_seed=flags.seed + epoch
    )
    steps = islice(groups_of(micro_batches, flags.accumulate), start, None)
    totals = [torch.tensor(float(value), device=world.device) for value in resumed_loss]
    smoothed = SmoothedLoss()
    step_losses = []  # on the device until read, every read_every steps
    read_every, read_at = 1, time.monotonic()  # the first step is read at once, to time it
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=start,
        desc=f"epoch: {epoch + 1}/{flags.epochs}",
        disable=not world.is_logger,
    )
    with bar:  # closed on a stop too, so the stop's message starts a line of its own
        for step, group in enumerate(steps, start=start):
            # Dropout draws from a stream of its own per step and rank: a run resumed
            # mid-epoch draws what the uninterrupted run drew, on every rank.
            device_generator(world.device).manual_seed(hash((flags.seed, epoch, step, world.rank)))
            step_losses.append(run.learner.step(group, task, world, flags.clip_grad, totals))
            bar.update()
            done = step + 1
            every = flags.save_every.steps
            save_now = bool(every) and (epoch * run.steps_per_epoch + done) % every == 0
            # Reading a loss makes the CPU wait for the device, so losses are read
            # every --log_every steps, not every step (nanoGPT's log_interval), and
            # before a checkpoint. There the ranks also agree whether to stop.
            if len(step_losses) < read_every and done < run.steps_per_epoch and not save_now:
                continue
            read_from = done - len(step_losses)
            values = read_losses(step_losses, world, epoch, read_from)
            step_losses = []
            first = epoch * run.steps_per_epoch + read_from + 1  # values[0]'s step in the run
            for run_step, value in enumerate(values, start=first):
                smoothed.update(value)
                run.tracker.log_metric("train_loss", value, run_step)
            bar.set_postfix(loss=f"{smoothed.value:.4f}", refresh=False)
            stop_signal = max_across_ranks(received(), world)
            # Slow steps are read more often than --log_every, so that a stop signal
            # is noticed within STOP_NOTICE_S: the slowest rank's step time decides.
            step_ms = round(1000 * (time.monotonic() - read_at) / len(values))
            read_every = reads_apart(flags.log_every, max_across_ranks(step_ms, world) / 1000)
            read_at = time.monotonic()
            save_now = save_now or run.timed_save_due()
            if done < run.steps_per_epoch and (save_now or stop_signal):
                # A mid-epoch checkpoint: the weights after this step, and its place.
                run.save(epoch, done, sum_across_ranks(totals, world))
                run.stop_if(stop_signal, f"in epoch {epoch + 1}/{flags.epochs} after step {done}")
    return totals


def save_epoch(run: Run, epoch: int) -> None:
    """Rank 0 writes the epoch's state dict, the checkpoint after it and the run
    record, and logs the valid loss, the state dict and the record to the tracker."""
    if not run.world.is_logger:
        return
    flags = run.flags
    state_dict = save_state_dict(run.learner.model, run.folder, epoch, flags.data_date)
    run.save(epoch, run.steps_per_epoch)
    run_info = save_run_record(run)
    run.tracker.log_metric(
        "valid_loss", run.metrics[-1]["valid_loss"], (epoch + 1) * run.steps_per_epoch
    )
    run.tracker.flush()
    run.tracker.log_artifact(state_dict)
    run.tracker.log_artifact(run_info)  # with the weights: what they were trained with


def save_run_record(run: Run, finished: bool = False) -> Path:
    """What serving needs to rebuild the model (task.run_info), the best epoch so
    far, and when the run started and whether it has finished (see runs.py)."""
    info = {
        **run.task.run_info,
        "best_epoch": best_epoch(run.metrics),
        "run": run.folder.name,
        "started": run.started,
        "finished": finished,
    }
    return save_run_info(run.folder, run.flags.data_date, info)


def test_and_report(run: Run) -> None:
    """The best epoch's weights on the test set (HF's load_best_model_at_end): rank 0
    prints the epochs' table and the task's report, writes the metrics table and the
    loss curve, and logs them with the report's files."""
    flags, world, learner, metrics = run.flags, run.world, run.learner, run.metrics
    best = best_epoch(metrics)
    if best != metrics[-1]["epoch"]:
        # Rank 0 reads the state dict it saved and sends it, so the others need no shared disk.
        weights = (
            load_state_dict(run.folder, best, flags.data_date, world.device)
            if world.is_logger
            else unwrap(learner.model).state_dict()
        )
        unwrap(learner.model).load_state_dict(broadcast_from_logger(weights, world))
    test_loss = evaluate(learner, run.task, run.task.test_set, flags.bs, world)
    if not world.is_logger:
        return
    print_metrics_table(metrics, best)
    test_metrics, report_files = run.task.report(
        unwrap(learner.model),
        test_loss,
        flags.bs,
        learner.autocast,
        run.folder,
        flags.data_date,
    )
    metrics_file = data_file(run.folder, "metrics", flags.data_date, ".csv")
    save_metrics_table(metrics, best, test_metrics, metrics_file)
    curve_file = data_file(run.folder, "loss_curve", flags.data_date, ".png")
    save_loss_curve(metrics, best, curve_file)
    for name, value in test_metrics.items():
        run.tracker.log_metric(name, value, flags.epochs * run.steps_per_epoch)
    run.tracker.flush()
    run.tracker.set_tag("best_epoch", best)
    run_info = save_run_record(run, finished=True)
    for path in [metrics_file, curve_file, run_info, *report_files]:
        run.tracker.log_artifact(path)
    run.tracker.close()


def compiled(model: nn.Module) -> nn.Module:
    """``model`` through torch.compile. Batch shapes vary (the last batch of an epoch;
    a bert batch is as wide as its longest text), so the graph is compiled for
    dynamic shapes once rather than again for each new shape."""
    if any(isinstance(m, nn.Embedding) and m.sparse for m in model.modules()):
        raise UsageError(
            "--compile: torch.compile cannot compile sparse embedding tables "
            "(inductor has no sparse gradients); train without --compile"
        )
    return torch.compile(model, dynamic=True)


def distributed(model: nn.Module, world: World, find_unused_parameters: bool) -> nn.Module:
    """``model`` in DistributedDataParallel, which averages its gradients across ranks."""
    # DDP broadcasts rank 0's buffers before every forward by default: a collective
    # per step, for buffers that never change in most models (BERT's position_ids).
    # Batch norm's running statistics do change, and keep the broadcast.
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    sync = any(isinstance(m, norms) and m.track_running_stats for m in model.modules())
    takes = inspect.signature(DistributedDataParallel).parameters
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers.
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in takes else "broadcast_buffers"
    wrapped = DistributedDataParallel(
        model,
        device_ids=[world.device] if world.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        # The gradients live in DDP's all-reduce buckets instead of being copied
        # there and back: one copy of them in memory, not two.
        gradient_as_bucket_view=True,
        **{buffers: sync},
    )
    wrapped.register_comm_hook(None, average_gradients)
    return wrapped


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in, or None for plain fp32."""
    # Emulated bf16 (V100, T4) counts as supported by default, and is slow.
    bf16_native = device.type == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":  # bf16 where the device runs it natively, else fp16
        return torch.bfloat16 if bf16_native else torch.float16
    if precision == "bf16" and not bf16_native:
        print(
            f"warning: {torch.cuda.get_device_name(device)} only emulates bf16, which is slow; "
            "--precision fp16 runs natively",
            file=sys.stderr,
        )
    return PRECISIONS[precision]


def device_generator(device: torch.device) -> torch.Generator:
    """The random generator that dropout on ``device`` draws from. Seeding it alone
    takes microseconds; torch.manual_seed seeds every device's, a tenth of a
    millisecond: several percent of a small model's step."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index]
    return torch.default_generator


def build_optimizers(model: nn.Module, lr, betas, eps, weight_decay) -> list:
    """AdamW for the dense weights, with decoupled weight decay on weight matrices
    only: biases and norm weights are not decayed (as Hugging Face and nanoGPT do),
    nor are embedding tables, most of whose rows a step does not even look up.

    Embedding tables built with ``sparse=True`` (the recommender's) get SparseAdam:
    their gradient holds only the rows the batch looked up, and SparseAdam updates
    only those rows, so a step costs the same for a catalogue of 2,000 items or
    200,000, where AdamW would read and write every row of every table.
    """
    embeddings = [module for module in model.modules() if isinstance(module, nn.Embedding)]
    sparse = {id(module.weight): module.weight for module in embeddings if module.sparse}
    tables = {id(module.weight) for module in embeddings}
    dense = [p for p in model.parameters() if id(p) not in sparse]
    decay = [p for p in dense if p.ndim >= 2 and id(p) not in tables]
    no_decay = [p for p in dense if p.ndim < 2 or id(p) in tables]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    # Fused AdamW runs one kernel for all parameters instead of several per tensor.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    optimizers = []
    if groups:
        optimizers.append(torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused))
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse.values(), lr=lr, betas=betas, eps=eps))
    return optimizers


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_, for sparse gradients too, which it cannot
    take: a sparse gradient's norm is that of its rows once duplicates are summed."""
    gradients = []
    for parameter in parameters:
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()
            gradients.append(parameter.grad._values())
        elif parameter.grad is not None:
            gradients.append(parameter.grad)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for gradient in gradients:
        gradient.mul_(scale)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Hugging Face's linear schedule: the learning rate rises from 0 to --lr over
    warmup_steps, then falls to 0 at total_steps. Adam's betas stay as given
    (OneCycleLR would cycle beta1)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Schedulers send SIGKILL 30 s after SIGTERM (torchrun's agent, Kubernetes' default
# grace period): noticing a stop within 10 s leaves time to write the checkpoint.
STOP_NOTICE_S = 10.0


def reads_apart(log_every: int, seconds_per_step: float) -> int:
    """Steps between two reads of the losses and the stop signal: --log_every, or
    fewer where that many steps would take longer than STOP_NOTICE_S."""
    return max(1, min(log_every, int(STOP_NOTICE_S / max(seconds_per_step, 1e-6))))


def read_losses(step_losses: list[torch.Tensor], world, epoch: int, first_step: int) -> list[float]:
    """The losses of the last steps as floats, read from the device at once. A loss
    that is not finite on any rank stops every rank together, naming the first step."""
    losses = torch.stack(step_losses).float()
    steps = torch.arange(len(losses), device=losses.device)
    first_bad = min_across_ranks(torch.where(losses.isfinite(), len(losses), steps).min(), world)
    values = losses.tolist()
    if first_bad < len(values):
        value = values[first_bad]
        raise UsageError(
            f"loss is {value if not math.isfinite(value) else 'not finite on another rank'} at "
            f"epoch {epoch + 1}, step {first_step + first_bad + 1}; try a lower --lr, "
            "--clip_grad, or --precision fp32"
        )
    return values


@torch.no_grad()
def evaluate(learner: Learner, task: Task, tensors, batch_size, world) -> float:
    """Mean loss over every row of ``tensors``; each rank scores its own shard."""
    # The bare model: DDP's forward may sync buffers, which would wait on ranks
    # whose shard is one batch shorter.
    model = unwrap(learner.model)
    model.eval()
    total = torch.zeros((), device=world.device)
    rows = torch.zeros((), device=world.device)
    order = torch.arange(task.num_rows(tensors))
    for batch in task.batches(tensors, shard(order, world, pad=False), batch_size):
        with learner.autocast():
            total += task.compute_loss(model, batch, reduction="sum").float()
        rows += task.num_rows(batch)
    return average_across_ranks(total, rows, world)
