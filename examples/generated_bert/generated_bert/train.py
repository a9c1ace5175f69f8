"""train(args, world): the whole training loop, top to bottom.

task -> model -> optimizer and schedule -> resume -> DDP wrap ->
epochs of (train, validate, record, save) until --epochs or --patience ->
the best epoch's weights -> test -> report.

What differs between kinds of project (data, model, loss, test report) is
task.py's; the world (device, rank, collectives) is world.py's.
"""

import math
import sys
from contextlib import nullcontext
from functools import partial
from itertools import islice

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .args import UsageError
from .batching import groups_of, shard
from .checkpoints import (
    BackgroundWriter,
    checkpoint_path,
    load_checkpoint,
    load_state_dict,
    resumes,
    run_info_path,
    save_checkpoint,
    save_run_info,
    save_state_dict,
    state_dict_path,
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
from .stopping import Stopped, received, stopped_at
from .task import Task, TaskSettings
from .tracking import RunLogger, TrackedRun, TrackingSettings
from .tune import report_epoch
from .world import (
    World,
    average_across_ranks,
    average_gradients,
    broadcast_from_logger,
    max_across_ranks,
    min_across_ranks,
    sum_across_ranks,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
def evaluate(model, task: Task, tensors, batch_size, world, autocast) -> float:
    """Mean loss over every row of ``tensors``; each rank scores its own shard."""
    # The bare model: DDP's forward may sync buffers, which would wait on ranks
    # whose shard is one batch shorter.
    model = unwrap(model)
    model.eval()
    total = torch.zeros((), device=world.device)
    rows = torch.zeros((), device=world.device)
    order = torch.arange(task.num_rows(tensors))
    for batch in task.batches(tensors, shard(order, world, pad=False), batch_size):
        with autocast():
            total += task.compute_loss(model, batch, reduction="sum").float()
        rows += task.num_rows(batch)
    return average_across_ranks(total, rows, world)


def train(args, world: World, tracked_run: TrackedRun | None = None) -> list[dict]:
    torch.manual_seed(args.seed)
    # The data on the device, the model, its loss and its test report (task.py).
    task = Task(TaskSettings.pick(vars(args)), args.data_dir, args.data_date, world)
    model = task.build_model().to(world.device)
    train_rows = task.training_rows(args.seed)

    rows_per_rank = math.ceil(len(train_rows) / world.world_size)
    steps_per_epoch = math.ceil(math.ceil(rows_per_rank / args.bs) / args.accumulate)
    total_steps = args.epochs * steps_per_epoch
    optimizers = build_optimizers(model, args.lr, args.betas, args.eps, args.weight_decay)
    warmup_steps = round(args.warmup_ratio * total_steps)
    schedulers = [linear_schedule(optimizer, warmup_steps, total_steps) for optimizer in optimizers]

    # Mixed precision: autocast picks the dtype per op. Only fp16 needs the scaler,
    # which keeps small gradients from flushing to zero; disabled, it is a no-op.
    dtype = autocast_dtype(args.precision, world.device)
    autocast = partial(torch.autocast, world.device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16)

    tracking = TrackingSettings.pick(vars(args))
    tracker = RunLogger(tracking, tracked_run) if world.is_logger and tracked_run else None

    checkpoint_file = checkpoint_path(args.output_dir, args.data_date)
    writer = BackgroundWriter()  # rank 0's checkpoints, written while training goes on
    # Where training starts: epoch first_epoch after first_step of its optimizer steps.
    # Rank 0 carries the losses of those steps, summed over all ranks when they were
    # saved, as resumed_loss (sum of losses x rows, rows).
    metrics, first_epoch, first_step, resumed_loss = [], 0, 0, (0.0, 0.0)
    if resumes(args.resume, checkpoint_file):
        checkpoint = load_checkpoint(checkpoint_file, world.device, args.epochs, steps_per_epoch)
        model.load_state_dict(checkpoint["model"])
        for optimizer, state in zip(optimizers, checkpoint["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        for scheduler, state in zip(schedulers, checkpoint["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        scaler.load_state_dict(checkpoint["scaler"])
        metrics, first_epoch = checkpoint["metrics"], checkpoint["epoch"]
        if checkpoint["step"] == steps_per_epoch:  # saved after the whole epoch
            first_epoch += 1
        else:
            first_step = checkpoint["step"]
            if world.is_logger:
                resumed_loss = checkpoint["epoch_loss"]
    elif world.is_logger:
        save_state_dict(model, args.output_dir, "orig", args.data_date)
    if world.is_logger:
        save_run_info(
            args.output_dir, args.data_date, {**task.run_info, "best_epoch": best_epoch(metrics)}
        )

    if world.is_ddp:
        model = DistributedDataParallel(
            model,
            device_ids=[world.device] if world.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters,
        )
        model.register_comm_hook(None, average_gradients)

    if world.is_logger:
        per_step = world.world_size * args.bs * args.accumulate
        print(
            f"{world.world_size} process(es) x batch {args.bs} x {args.accumulate} "
            f"accumulated = {per_step} {task.noun} per step, {steps_per_epoch} steps per epoch, "
            f"on {world.device}, {dtype or torch.float32}"
        )
        if first_step:
            print(
                f"resuming in epoch {first_epoch + 1}/{args.epochs} after step {first_step} "
                f"from {checkpoint_file}"
            )
        elif first_epoch:
            print(f"resuming after epoch {first_epoch - 1} from {checkpoint_file}")

    for epoch in range(first_epoch, args.epochs):
        # Every rank has the same valid losses, so every rank stops at the same epoch.
        if args.patience and epochs_since_best(metrics) >= args.patience:
            if world.is_logger:
                print(
                    f"valid_loss has not improved for {args.patience} epoch(s) since epoch "
                    f"{best_epoch(metrics)}: stopping early"
                )
            break
        timer = EpochTimer()
        model.train()
        # A new order every epoch, the same on every rank; each rank takes its shard.
        shuffle = torch.Generator().manual_seed(args.seed + epoch)
        # int32: at 25 million rows, a permutation takes 100 MB instead of 200.
        order = train_rows[torch.randperm(len(train_rows), generator=shuffle, dtype=torch.int32)]
        micro_batches = task.batches(
            task.train_set, shard(order, world, pad=True), args.bs, shuffle_seed=args.seed + epoch
        )
        steps = groups_of(micro_batches, args.accumulate)
        # A run resumed mid-epoch skips the steps it had taken, and counts their losses.
        start = first_step if epoch == first_epoch else 0
        loss_sum, rows_seen = (
            torch.tensor(value if start else 0.0, device=world.device) for value in resumed_loss
        )
        smoothed = SmoothedLoss()
        step_losses = []  # on the device until read, every --log_every steps
        bar = tqdm(
            total=steps_per_epoch,
            initial=start,
            desc=f"epoch: {epoch + 1}/{args.epochs}",
            disable=not world.is_logger,
        )
        for step, group in enumerate(islice(steps, start, None), start=start):
            # Dropout draws from a stream of its own per step and rank: a run resumed
            # mid-epoch draws what the uninterrupted run drew, on every rank.
            device_generator(world.device).manual_seed(hash((args.seed, epoch, step, world.rank)))
            step_loss = torch.zeros((), device=world.device)
            for i, batch in enumerate(group):
                # DDP all-reduces gradients in backward; with accumulation only the
                # last micro-batch of the step needs that, so skip it on the others.
                is_last = i == len(group) - 1
                with nullcontext() if is_last or not world.is_ddp else model.no_sync():
                    with autocast():
                        loss = task.compute_loss(model, batch)
                    scaler.scale(loss / len(group)).backward()
                step_loss += loss.detach() / len(group)
                loss_sum += loss.detach() * task.num_rows(batch)
                rows_seen += task.num_rows(batch)

            if args.clip_grad:
                for optimizer in optimizers:  # clip the true gradients, not the scaled ones
                    scaler.unscale_(optimizer)
                clip_grad_norm(model.parameters(), args.clip_grad)
            scale = scaler.get_scale()
            for optimizer in optimizers:
                scaler.step(optimizer)  # skips the step if fp16 gradients overflowed,
            scaler.update()  # and then lowers the scale,
            if scaler.get_scale() >= scale:  # so the schedule moves only on real steps
                for scheduler in schedulers:
                    scheduler.step()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(step_loss)
            bar.update()

            done = step + 1
            every = args.save_every.steps
            save_now = bool(every) and (epoch * steps_per_epoch + done) % every == 0
            # Reading a loss makes the CPU wait for the device, so losses are read
            # every --log_every steps, not every step (nanoGPT's log_interval), and
            # before a checkpoint. There the ranks also agree whether to stop.
            if len(step_losses) == args.log_every or done == steps_per_epoch or save_now:
                read_from = done - len(step_losses)
                values = read_losses(step_losses, world, epoch, read_from)
                step_losses = []
                for value in values:
                    smoothed.update(value)
                bar.set_postfix(loss=f"{smoothed.value:.4f}", refresh=False)
                if tracker:
                    for offset, value in enumerate(values, start=read_from + 1):
                        tracker.log_metric("train_loss", value, epoch * steps_per_epoch + offset)
                stop_signal = max_across_ranks(received(), world)
                if args.save_every.seconds:  # rank 0's clock decides, for every rank
                    due = writer.seconds_since_write() >= args.save_every.seconds
                    save_now = bool(max_across_ranks(world.is_logger and due, world))
                if done < steps_per_epoch and (save_now or stop_signal):
                    # A mid-epoch checkpoint: the weights after this step, and its place.
                    loss_so_far = sum_across_ranks([loss_sum, rows_seen], world)
                    if world.is_logger:
                        save_checkpoint(
                            writer,
                            checkpoint_file,
                            model=model,
                            optimizers=optimizers,
                            schedulers=schedulers,
                            scaler=scaler,
                            epoch=epoch,
                            step=done,
                            epochs=args.epochs,
                            steps_per_epoch=steps_per_epoch,
                            metrics=metrics,
                            epoch_loss=loss_so_far,
                        )
                    if stop_signal:
                        writer.wait()
                        bar.close()
                        where = f"in epoch {epoch + 1}/{args.epochs} after step {done}"
                        raise Stopped(
                            stop_signal,
                            stopped_at(stop_signal, where, checkpoint_file)
                            if world.is_logger
                            else "",
                        )
        bar.close()

        # The all-reduces here are also the barrier: every rank has finished the
        # epoch before rank 0 writes its files.
        train_loss = average_across_ranks(loss_sum, rows_seen, world)
        valid_loss = evaluate(model, task, task.valid_set, args.bs, world, autocast)
        metrics.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "time": timer.elapsed(),
            }
        )
        if world.is_logger:
            save_state_dict(model, args.output_dir, epoch, args.data_date)
            save_checkpoint(
                writer,
                checkpoint_file,
                model=model,
                optimizers=optimizers,
                schedulers=schedulers,
                scaler=scaler,
                epoch=epoch,
                step=steps_per_epoch,
                epochs=args.epochs,
                steps_per_epoch=steps_per_epoch,
                metrics=metrics,
            )
            save_run_info(
                args.output_dir,
                args.data_date,
                {**task.run_info, "best_epoch": best_epoch(metrics)},
            )
        if tracker:
            tracker.log_metric("valid_loss", valid_loss, (epoch + 1) * steps_per_epoch)
            tracker.flush()
            tracker.log_artifact(state_dict_path(args.output_dir, epoch, args.data_date))
        # A trial of a search: after the tracker has the epoch, as ASHA may stop it here.
        if args.use_ray_tune:
            report_epoch(
                {**metrics[-1], "world_size": world.world_size},
                in_ray_train=args.workers_per_trial > 1,
            )
        # A stop signal during validation or saving: the epoch's checkpoint is whole.
        stop_signal = max_across_ranks(received(), world)
        if stop_signal and epoch + 1 < args.epochs:
            writer.wait()
            where = f"after epoch {epoch + 1}/{args.epochs}"
            raise Stopped(
                stop_signal,
                stopped_at(stop_signal, where, checkpoint_file) if world.is_logger else "",
            )

    writer.wait()  # the last checkpoint has landed, or its error is raised here
    best = best_epoch(metrics)
    if world.is_logger:
        print_metrics_table(metrics, best)
    if best != metrics[-1]["epoch"]:
        # Test the best epoch's weights (HF's load_best_model_at_end). Rank 0 reads
        # the state dict it saved and sends it, so the others need no shared disk.
        weights = (
            load_state_dict(args.output_dir, best, args.data_date, world.device)
            if world.is_logger
            else unwrap(model).state_dict()
        )
        unwrap(model).load_state_dict(broadcast_from_logger(weights, world))

    test_loss = evaluate(model, task, task.test_set, args.bs, world, autocast)
    if world.is_logger:
        test_metrics, report_files = task.report(
            unwrap(model), test_loss, args.bs, autocast, args.output_dir, args.data_date
        )
        metrics_file = data_file(args.output_dir, "metrics", args.data_date, ".csv")
        save_metrics_table(metrics, best, test_metrics, metrics_file)
        curve_file = data_file(args.output_dir, "loss_curve", args.data_date, ".png")
        save_loss_curve(metrics, best, curve_file)
    if tracker:
        for name, value in test_metrics.items():
            tracker.log_metric(name, value, total_steps)
        tracker.flush()
        tracker.set_tag("best_epoch", best)
        for path in [
            metrics_file,
            curve_file,
            run_info_path(args.output_dir, args.data_date),
            *report_files,
        ]:
            tracker.log_artifact(path)
        tracker.close()
    return metrics
