"""Timed training loops, run inside a generated project: python loops.py recommender|bert ARGS.

Prints one JSON object of measurements. Each loop trains the same model on the
same data for the same number of epochs, with a validation pass per epoch, so
that the times compare like for like.
"""

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generated_train(package: str, args) -> float:
    """Seconds of the generated train(), as `python main.py` runs it in one process."""
    train = __import__(f"{package}.train", fromlist=["train"]).train
    world = __import__(f"{package}.world", fromlist=["joined_world"])

    def run():
        with world.joined_world(None) as one_process:
            train(args, one_process)
    return timed(run)


def epoch_stamped_train(package: str, args) -> dict:
    """The generated train(), as `python main.py` runs it in one process, timed in
    parts: the steady loop (from the end of the first epoch, its files written, to
    the end of the last), what comes before it (loading the data, building the
    model, the first epoch beyond the steady time of one) and after it (the test
    set, the ranking, the table and the loss curve)."""
    train = __import__(f"{package}.train", fromlist=["train"]).train
    world = __import__(f"{package}.world", fromlist=["joined_world"])
    stamps = []
    start = time.perf_counter()
    with world.joined_world(None) as one_process:
        train(args, one_process, on_epoch=lambda row: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    per_epoch = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"per_epoch_s": per_epoch, "before_s": stamps[0] - start - per_epoch,
            "after_s": end - stamps[-1]}


def recommender(package: str, data_dir: str, epochs: int, bs: int, dim: int, lightning: bool,
                repeat: int):
    cli = __import__(f"{package}.cli", fromlist=["parse_args"])
    task_module = __import__(f"{package}.task", fromlist=["Task"])
    world = __import__(f"{package}.world", fromlist=["World"])
    args = cli.parse_args(["--data_dir", data_dir, "--gpus", "0", "--epochs", str(epochs),
                           "--bs", str(bs), "--embedding_dim", str(dim)])
    task = task_module.Task(task_module.TaskSettings.pick(vars(args)), args.data_dir,
                            args.data_date, world.World(0, 0, 1, torch.device("cpu")))
    train_set, valid_set = task.train_set, task.valid_set
    rows = len(train_set["rating"])
    results = {"rows_per_epoch": rows, "epochs": epochs}
    compute_loss = task.compute_loss  # with the L2 penalty while the model trains

    def fresh_model(sparse: bool = True):
        """The project's model; with sparse=False its tables are dense, as the peers'
        tools (torch.optim.Adam, Lightning's configure_optimizers) need them."""
        torch.manual_seed(0)
        model = task.build_model()
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.sparse = sparse
        return model

    def validate(model):
        model.eval()
        with torch.no_grad():
            for start in range(0, len(valid_set["rating"]), bs):
                batch = {k: v[start:start + bs] for k, v in valid_set.items()}
                compute_loss(model, batch, reduction="sum")
        model.train()

    # The limit: the fastest loop for this model, with no bar, no files, no per-step sync:
    # SparseAdam for the sparse tables, fused AdamW for the rest, as the generated loop.
    # Timed as the generated loop is: the steady time of one epoch.
    def limit() -> float:
        stamps = []
        model = fresh_model()
        tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        rest = [p for p in model.parameters() if all(p is not t for t in tables)]
        optimizers = [torch.optim.AdamW(rest, lr=args.lr, fused=True, weight_decay=0.0),
                      torch.optim.SparseAdam(tables, lr=args.lr)]
        total = epochs * math.ceil(rows / bs)  # the generated loop's linear decay
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 - step / total)
                      for o in optimizers]
        for _ in range(epochs):
            order = torch.randperm(rows)
            for start in range(0, rows, bs):
                idx = order[start:start + bs]
                loss = compute_loss(model, {k: v[idx] for k, v in train_set.items()})
                loss.backward()
                for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            validate(model)
            stamps.append(time.perf_counter())
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    # Warm up first, untimed: the first loop of a process pays for kernel and
    # allocator set-up. Then each side in turn, `repeat` times: on a shared machine
    # the speed drifts by 10-50% within a minute, and a pair of runs back to back
    # shares most of the drift. The ratio reported is the median of the pairs'.
    limit()
    generated, limits = [], []
    for _ in range(repeat):
        generated.append(epoch_stamped_train(package, args))
        limits.append(limit())
    results["limit_ratios"] = [round(limit_s / run["per_epoch_s"], 3)
                               for run, limit_s in zip(generated, limits, strict=True)]
    results["vs_limit"] = statistics.median(results["limit_ratios"])
    for part in ("per_epoch_s", "before_s", "after_s"):
        results[f"generated_{part}"] = statistics.median(run[part] for run in generated)
    # Whole runs of `epochs` epochs at the steady speed, for the other ratios.
    results["generated_s"] = results["generated_per_epoch_s"] * epochs

    # pytorch-quik's way: a DataLoader over a TensorDataset, Adam without fusing.
    def seed_loop():
        from torch.utils.data import DataLoader, TensorDataset

        model = fresh_model(sparse=False)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        loader = DataLoader(TensorDataset(train_set["user"], train_set["item"], train_set["rating"]),
                            batch_size=bs, shuffle=True)
        for _ in range(epochs):
            for user, item, rating in loader:
                optimizer.zero_grad()
                loss = compute_loss(model, {"user": user, "item": item, "rating": rating})
                loss.backward()
                optimizer.step()
            validate(model)
    results["seed_loop_s"] = timed(seed_loop)

    if lightning:
        results["lightning_s"] = lightning_loop(fresh_model, compute_loss, train_set, valid_set,
                                                args, epochs, bs)
    print(json.dumps(results))


def lightning_loop(fresh_model, compute_loss, train_set, valid_set, args, epochs, bs):
    import lightning as L  # noqa: N812
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = fresh_model(sparse=False)

        def training_step(self, batch, _):
            user, item, rating = batch
            return compute_loss(self.model, {"user": user, "item": item, "rating": rating})

        def validation_step(self, batch, _):
            user, item, rating = batch
            return compute_loss(self.model, {"user": user, "item": item, "rating": rating})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=args.lr)

    def loader(split, shuffle):
        tensors = TensorDataset(split["user"], split["item"], split["rating"])
        return DataLoader(tensors, batch_size=bs, shuffle=shuffle)

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=True,
                        enable_model_summary=False, num_sanity_val_steps=0)
    return timed(lambda: trainer.fit(Module(), loader(train_set, True), loader(valid_set, False)))


def bert(package: str, data_dir: str, model_dir: str, epochs: int, bs: int, max_length: int):
    cli = __import__(f"{package}.cli", fromlist=["parse_args"])
    hf = __import__(f"{package}.hf", fromlist=["get_tokenizer"])
    data = __import__(f"{package}.data", fromlist=["load_texts"])
    args = cli.parse_args(["--data_dir", data_dir, "--gpus", "0", "--epochs", str(epochs),
                           "--bs", str(bs), "--bert_type", model_dir, "--lr", "1e-3",
                           "--max_length", str(max_length)])
    tokenizer = hf.get_tokenizer(model_dir)
    texts, labels = data.load_texts(args.data_dir, "train", args.data_date)
    label_names = data.load_label_names(args.data_dir, args.data_date)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    tokens = sum(len(ids) for ids in encoded) * epochs
    results = {"tokens": tokens}
    for split in ("train", "valid", "test"):  # tokenize once, outside the timings
        hf.load_encoded_split(args.data_dir, args.data_date, split, tokenizer, max_length)

    def fresh():
        torch.manual_seed(0)
        return hf.get_pretrained_model(model_dir, label_names)

    # Warm up, untimed: the first model load imports its code, and the report's
    # sklearn and matplotlib are start-up costs, not training throughput.
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401

    fresh()
    results["generated_s"] = generated_train(package, args)

    def max_pad():  # the same loop, every text padded to max_length
        model = fresh()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        padded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length",
                           return_tensors="pt")
        targets = torch.tensor(labels)
        for _ in range(epochs):
            order = torch.randperm(len(texts))
            for start in range(0, len(texts), bs):
                idx = order[start:start + bs]
                out = model(input_ids=padded["input_ids"][idx],
                            attention_mask=padded["attention_mask"][idx], labels=targets[idx])
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    results["maxpad_s"] = timed(max_pad)

    def hf_trainer():
        import tempfile

        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        def dataset(split_texts, split_labels):
            ids = tokenizer(split_texts, truncation=True, max_length=max_length)["input_ids"]
            return [{"input_ids": row, "labels": label}
                    for row, label in zip(ids, split_labels, strict=True)]

        # Like the generated loop: train, and score the validation set every epoch.
        with tempfile.TemporaryDirectory() as out:
            Trainer(
                model=fresh(),
                args=TrainingArguments(output_dir=out, per_device_train_batch_size=bs,
                                       per_device_eval_batch_size=bs, eval_strategy="epoch",
                                       num_train_epochs=epochs, learning_rate=1e-3, report_to=[],
                                       save_strategy="no", logging_strategy="no", use_cpu=True,
                                       disable_tqdm=True),
                train_dataset=dataset(texts, labels),
                eval_dataset=dataset(*data.load_texts(args.data_dir, "valid", args.data_date)),
                data_collator=DataCollatorWithPadding(tokenizer),
            ).train()
    results["hf_trainer_s"] = timed(hf_trainer)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(Path.cwd()))
    kind, *rest = sys.argv[1:]
    if kind == "recommender":
        package, data_dir, epochs, bs, dim, use_lightning, repeat = rest
        recommender(package, data_dir, int(epochs), int(bs), int(dim), use_lightning == "1",
                    int(repeat))
    else:
        package, data_dir, model_dir, epochs, bs, max_length = rest
        bert(package, data_dir, model_dir, int(epochs), int(bs), int(max_length))
