"""train(args, gpu): the whole training loop, top to bottom.

world -> data -> model -> optimizer and schedule -> (DDP wrap) -> epochs of
(train, validate, record, save) -> test -> clean up.
"""

import inspect
import math

import torch
from tqdm import tqdm

from .batching import batches, num_rows, shard
from .checkpoints import save_state_dict, unwrap
from .data import load_id_maps, load_split
from .files import data_file
from .metrics import EpochTimer, SmoothedLoss, save_metrics_table
from .model import build_model, compute_loss
from .world import average_across_ranks, cleanup_world, setup_world


def build_optimizer(optimizer_class, params, args, **extra_kwargs):
    """optimizer_class(params, lr=..., weight_decay=..., betas=..., eps=..., **extra_kwargs),
    passing only the arguments optimizer_class accepts (SGD has no betas)."""
    accepted = inspect.signature(optimizer_class).parameters
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay, "betas": args.betas,
              "eps": args.eps, **extra_kwargs}
    return optimizer_class(params, **{k: v for k, v in kwargs.items() if k in accepted})


@torch.no_grad()
def evaluate(model, tensors, batch_size, world) -> float:
    """Mean loss over every row of ``tensors``; each rank scores its own shard."""
    # The bare model: DDP's forward may sync buffers, which would wait on ranks
    # whose shard is one batch shorter.
    model = unwrap(model)
    model.eval()
    total = torch.zeros((), device=world.device)
    rows = torch.zeros((), device=world.device)
    order = torch.arange(num_rows(tensors))
    for batch in batches(tensors, shard(order, world, pad=False), batch_size):
        total += compute_loss(model, batch, reduction="sum").float()
        rows += num_rows(batch)
    return average_across_ranks(total, rows, world)


def train(args, gpu=None):
    world = setup_world(gpu)
    torch.manual_seed(args.seed)

    # Data: every split lives on the device; batches are cut from it by index.
    train_set = load_split(args.data_dir, "train", args.data_date, world.device)
    valid_set = load_split(args.data_dir, "valid", args.data_date, world.device)
    test_set = load_split(args.data_dir, "test", args.data_date, world.device)
    id_maps = load_id_maps(args.data_dir, args.data_date)

    model = build_model(args, train_set, id_maps).to(world.device)
    if world.is_logger:
        save_state_dict(model, args.data_dir, "orig", args.data_date)

    rows_per_rank = math.ceil(num_rows(train_set) / world.world_size)
    steps_per_epoch = math.ceil(rows_per_rank / args.bs)
    # Fused AdamW runs one kernel for all parameters instead of several per tensor.
    optimizer = build_optimizer(torch.optim.AdamW, model.parameters(), args,
                                fused=world.device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    if world.is_logger:
        print(f"{world.world_size} process(es) x {args.bs} = {world.world_size * args.bs} "
              f"ratings per step, {steps_per_epoch} steps per epoch, on {world.device}")

    metrics = []
    for epoch in range(args.epochs):
        timer = EpochTimer()
        model.train()
        # A new order every epoch, the same on every rank; each rank takes its shard.
        order = torch.randperm(num_rows(train_set),
                               generator=torch.Generator().manual_seed(args.seed + epoch))
        smoothed = SmoothedLoss()
        loss_sum = torch.zeros((), device=world.device)
        rows_seen = torch.zeros((), device=world.device)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch: {epoch + 1}/{args.epochs}",
                   disable=not world.is_logger)
        for step, batch in enumerate(batches(train_set, shard(order, world, pad=True), args.bs)):
            loss = compute_loss(model, batch)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                    "try a lower --lr")
            loss_sum += loss.detach() * num_rows(batch)
            rows_seen += num_rows(batch)
            bar.set_postfix(loss=f"{smoothed.update(loss_value):.4f}", refresh=False)
            bar.update()
        bar.close()

        train_loss = average_across_ranks(loss_sum, rows_seen, world)
        valid_loss = evaluate(model, valid_set, args.bs, world)
        metrics.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                        "time": timer.elapsed()})
        if world.is_logger:
            save_state_dict(model, args.data_dir, epoch, args.data_date)

    test_mse = evaluate(model, test_set, args.bs, world)
    if world.is_logger:
        save_metrics_table(metrics, data_file(args.data_dir, "metrics", args.data_date, ".csv"))
        print(f"test RMSE: {math.sqrt(test_mse):.4f}")
    cleanup_world(world)
    return metrics
