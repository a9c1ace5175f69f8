"""train(args, gpu): the whole training loop, top to bottom.

world -> data -> model -> optimizer and schedule -> resume -> DDP wrap ->
epochs of (train, validate, record, save) -> test -> clean up.
"""

import inspect
import math
from contextlib import nullcontext
from functools import partial

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .args import UsageError
from .batching import batches, groups_of, num_rows, shard
from .checkpoints import (
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_state_dict,
    state_dict_path,
    unwrap,
)
from .data import load_label_names
from .files import data_file
from .hf import get_tokenizer, load_encoded_split
from .metrics import EpochTimer, SmoothedLoss, save_metrics_table
from .model import build_model, compute_loss
from .report import classification_summary, predict
from .tracking import RunLogger
from .tune import report_epoch
from .world import average_across_ranks, cleanup_world, logger_first, setup_world

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in, or None for plain fp32."""
    if precision == "amp":  # --mixed_precision: bf16 where the device has it, else fp16
        bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float16
    return PRECISIONS[precision]


def build_optimizer(optimizer_class, params, args, **extra_kwargs):
    """optimizer_class(params, lr=..., weight_decay=..., betas=..., eps=..., **extra_kwargs),
    passing only the arguments optimizer_class accepts (SGD has no betas)."""
    accepted = inspect.signature(optimizer_class).parameters
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay, "betas": args.betas,
              "eps": args.eps, **extra_kwargs}
    return optimizer_class(params, **{k: v for k, v in kwargs.items() if k in accepted})


@torch.no_grad()
def evaluate(model, tensors, batch_size, world, autocast) -> float:
    """Mean loss over every row of ``tensors``; each rank scores its own shard."""
    # The bare model: DDP's forward may sync buffers, which would wait on ranks
    # whose shard is one batch shorter.
    model = unwrap(model)
    model.eval()
    total = torch.zeros((), device=world.device)
    rows = torch.zeros((), device=world.device)
    order = torch.arange(num_rows(tensors))
    for batch in batches(tensors, shard(order, world, pad=False), batch_size):
        with autocast():
            total += compute_loss(model, batch, reduction="sum").float()
        rows += num_rows(batch)
    return average_across_ranks(total, rows, world)


def train(args, gpu=None):
    world = setup_world(gpu)
    torch.manual_seed(args.seed)
    # Data: the texts, tokenized for --bert_type once and cached under data/tokenized/
    # (rank 0 fills the cache, the others read it), kept on the device.
    tokenizer = get_tokenizer(args.bert_type)
    label_names = load_label_names(args.data_dir, args.data_date)
    with logger_first(world):
        train_set, valid_set, test_set = (
            load_encoded_split(args, tokenizer, name, world.device)
            for name in ("train", "valid", "test"))

    model = build_model(args, label_names).to(world.device)

    rows_per_rank = math.ceil(num_rows(train_set) / world.world_size)
    steps_per_epoch = math.ceil(math.ceil(rows_per_rank / args.bs) / args.accumulate)
    # Fused AdamW runs one kernel for all parameters instead of several per tensor.
    optimizer = build_optimizer(torch.optim.AdamW, model.parameters(), args,
                                fused=world.device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    # Mixed precision: autocast picks the dtype per op. Only fp16 needs the scaler,
    # which keeps small gradients from flushing to zero; disabled, it is a no-op.
    dtype = autocast_dtype(args.precision, world.device)
    autocast = partial(torch.autocast, world.device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16)
    tracker = RunLogger(args) if world.is_logger and args.mlflow_run_id else None

    checkpoint_file = checkpoint_path(args.output_dir, args.data_date)
    metrics, first_epoch = [], 0
    if args.resume:
        checkpoint = load_checkpoint(checkpoint_file, world.device, args.epochs, steps_per_epoch)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"])
        metrics, first_epoch = checkpoint["metrics"], checkpoint["epoch"] + 1
    elif world.is_logger:
        save_state_dict(model, args.output_dir, "orig", args.data_date)

    if world.is_ddp:
        model = DistributedDataParallel(
            model, device_ids=[world.device] if world.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)

    if world.is_logger:
        per_step = world.world_size * args.bs * args.accumulate
        print(f"{world.world_size} process(es) x batch {args.bs} x {args.accumulate} "
              f"accumulated = {per_step} texts per step, {steps_per_epoch} steps per epoch, "
              f"on {world.device}, {dtype or torch.float32}")
        if first_epoch:
            print(f"resuming after epoch {first_epoch - 1} from {checkpoint_file}")

    for epoch in range(first_epoch, args.epochs):
        timer = EpochTimer()
        model.train()
        # A new order every epoch, the same on every rank; each rank takes its shard.
        order = torch.randperm(num_rows(train_set),
                               generator=torch.Generator().manual_seed(args.seed + epoch))
        micro_batches = batches(train_set, shard(order, world, pad=True), args.bs,
                                shuffle_seed=args.seed + epoch)
        smoothed = SmoothedLoss()
        loss_sum = torch.zeros((), device=world.device)
        rows_seen = torch.zeros((), device=world.device)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch: {epoch + 1}/{args.epochs}",
                   disable=not world.is_logger)
        for step, group in enumerate(groups_of(micro_batches, args.accumulate)):
            step_loss = torch.zeros((), device=world.device)
            for i, batch in enumerate(group):
                # DDP all-reduces gradients in backward; with accumulation only the
                # last micro-batch of the step needs that, so skip it on the others.
                is_last = i == len(group) - 1
                with nullcontext() if is_last or not world.is_ddp else model.no_sync():
                    with autocast():
                        loss = compute_loss(model, batch)
                    scaler.scale(loss / len(group)).backward()
                step_loss += loss.detach() / len(group)
                loss_sum += loss.detach() * num_rows(batch)
                rows_seen += num_rows(batch)

            loss_value = step_loss.item()
            if not math.isfinite(loss_value):
                raise UsageError(
                    f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; try a lower "
                    "--lr, --clip_grad, or --precision fp32")
            if args.clip_grad:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{smoothed.update(loss_value):.4f}", refresh=False)
            bar.update()
            if tracker:
                tracker.log_metric("train_loss", loss_value, epoch * steps_per_epoch + step + 1)
        bar.close()

        # The all-reduces here are also the barrier: every rank has finished the
        # epoch before rank 0 writes its files.
        train_loss = average_across_ranks(loss_sum, rows_seen, world)
        valid_loss = evaluate(model, valid_set, args.bs, world, autocast)
        metrics.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                        "time": timer.elapsed()})
        if world.is_logger:
            save_state_dict(model, args.output_dir, epoch, args.data_date)
            save_checkpoint(checkpoint_file, model=model, optimizer=optimizer,
                            scheduler=scheduler, scaler=scaler, epoch=epoch,
                            epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                            metrics=metrics)
        if args.use_ray_tune:  # a trial of a search: ASHA may stop it here
            report_epoch(args, {**metrics[-1], "world_size": world.world_size})
        if tracker:
            tracker.log_metric("valid_loss", valid_loss, (epoch + 1) * steps_per_epoch)
            tracker.flush()
            tracker.log_artifact(state_dict_path(args.output_dir, epoch, args.data_date))
    test_loss = evaluate(model, test_set, args.bs, world, autocast)
    if world.is_logger:
        metrics_file = data_file(args.output_dir, "metrics", args.data_date, ".csv")
        save_metrics_table(metrics, metrics_file)
        print(f"test loss: {test_loss:.4f}")
        # One process scores the whole test set, so the report needs no gathering.
        predictions = predict(unwrap(model), test_set, args.bs, autocast)
        report, report_files = classification_summary(
            predictions, test_set["labels"].cpu(), label_names, args.output_dir, args.data_date)
    if tracker:
        for name, value in {"test_loss": test_loss, **report}.items():
            tracker.log_metric(name, value, args.epochs * steps_per_epoch)
        tracker.flush()
        for path in [metrics_file, *report_files]:
            tracker.log_artifact(path)
    cleanup_world(world)
    return metrics
