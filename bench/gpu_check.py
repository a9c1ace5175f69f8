"""The GPU check, in one go: python bench/gpu_check.py [--dry-run] [--json FILE]

Renders a recommender and a bert project from this checkout and, on GPU 0:
- trains each for one epoch in fp32, bf16 and fp16, with and without --compile
  (the recommender's sparse tables refuse --compile in one line: that is checked too);
- kills a run with kill -9 after its first checkpoint, resumes it, and compares
  the final weights with an uninterrupted run's;
- times one epoch of the tiny BERT against Hugging Face's Trainer on the same
  texts, batch and learning rate, as tokens per second.

It prints one Markdown table, for BENCHMARKS.md. It takes about 5 minutes on one
H100. --dry-run runs the same steps on the CPU with tiny data and compiles only
once, so that CI proves the script works on machines without a GPU.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import copier
import torch

REPO = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1"}
DATE = "20240131"
SIZES = {
    "gpu": {"ratings": 1_000_000, "users": 20_000, "items": 5_000, "texts": 20_000, "bs": 256},
    "dry-run": {"ratings": 4_000, "users": 100, "items": 50, "texts": 300, "bs": 32},
}


def run(command: list, cwd: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **OFFLINE})
    return result, time.perf_counter() - started


def checked(command: list, cwd: Path) -> str:
    result, _ = run(command, cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def render(dest: Path, kind: str) -> Path:
    copier.run_copy(str(REPO), dest, data={"project_name": dest.name, "kind": kind},
                    vcs_ref="HEAD", defaults=True, quiet=True)
    return dest


def outcome(result: subprocess.CompletedProcess) -> str:
    """What a training run ended with: its test score, or the error's last line."""
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {result.returncode}: {last[:90]}"
    for line in result.stdout.splitlines():
        if line.startswith("test RMSE"):
            return f"ok, {line}"
        if line.strip().startswith("accuracy"):  # the classification report's row
            return "ok, test accuracy " + line.split()[1]
    return "ok"


def fresh_data(project: Path, name: str) -> Path:
    """A copy of the project's prepared data, without any run's files."""
    dest = project / "runs-data" / name
    shutil.copytree(project / "data", dest, ignore=shutil.ignore_patterns("runs"))
    return dest


def precision_rows(project: Path, package: str, gpus: str, bs: int, dry_run: bool,
                   extra: list) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        for compile_ in (False, True):
            if dry_run and compile_ and not (precision == "fp32" or package == "recs"):
                continue  # on the CPU, one compiled run proves the path; each takes minutes
            data_dir = fresh_data(project, f"{precision}-{compile_}")
            command = [sys.executable, "main.py", "--gpus", gpus, "--epochs", "1", "--bs", bs,
                       "--precision", precision, "--data_dir", data_dir, *extra]
            result, seconds = run(command + (["--compile"] if compile_ else []), project)
            rows.append({"check": "train 1 epoch", "kind": package, "precision": precision,
                         "compile": "yes" if compile_ else "no", "result": outcome(result),
                         "seconds": round(seconds, 1)})
    return rows


def kill_and_resume_row(project: Path, gpus: str, bs: int) -> dict:
    """kill -9 after the first checkpoint, then --resume: the same final weights."""
    args = ["--gpus", gpus, "--epochs", "2", "--bs", bs, "--save_every", "20"]
    whole = fresh_data(project, "uninterrupted")
    checked([sys.executable, "main.py", "--data_dir", whole, *args], project)
    killed = fresh_data(project, "killed")
    process = subprocess.Popen([sys.executable, "main.py", "--data_dir", str(killed),
                                *map(str, args)], cwd=project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not list(killed.glob(f"runs/*/checkpoint_{DATE}.pt")) and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    started = time.perf_counter()
    resumed = checked([sys.executable, "main.py", "--data_dir", killed, *args, "--resume"],
                      project)
    seconds = time.perf_counter() - started
    (a,) = whole.glob(f"runs/*/state_dict_e1_{DATE}.pt")
    (b,) = killed.glob(f"runs/*/state_dict_e1_{DATE}.pt")
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    difference = max((a[key].float() - b[key].float()).abs().max().item() for key in a)
    where = next((line for line in resumed.splitlines() if line.startswith("resuming")), "")
    return {"check": "kill -9, then --resume", "kind": "recs", "precision": "fp32",
            "compile": "no", "result": f"{where[:40]}; max weight difference {difference:.1e}",
            "seconds": round(seconds, 1)}


# Each side trains one epoch twice in one process and times the second: the first
# pays for tokenizing, loading and the GPU's warm-up. Both take the same texts,
# batch, learning rate and precision; both score the validation set once.
GENERATED = """
import sys, time, torch
sys.path.insert(0, ".")
from bert.cli import parse_args
from bert.train import train
from bert.world import joined_world
args = parse_args(sys.argv[1:])
with joined_world(0 if torch.cuda.is_available() else None) as world:
    train(args, world)
    started = time.perf_counter()
    train(args, world)
print(time.perf_counter() - started)
"""

HF_TRAINER = """
import sys, time, torch
sys.path.insert(0, ".")
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, Trainer, TrainingArguments)
from bert.data import load_label_names, load_texts
data_dir, bs, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained("models/tiny")
names = load_label_names(data_dir, "{date}")

def rows(split):
    texts, labels = load_texts(data_dir, split, "{date}")
    ids = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    return [{{"input_ids": row, "labels": label}} for row, label in zip(ids, labels)]

train_rows, valid_rows = rows("train"), rows("valid")
for timed in (False, True):
    model = AutoModelForSequenceClassification.from_pretrained("models/tiny", num_labels=len(names))
    arguments = TrainingArguments(
        output_dir="hf-out", per_device_train_batch_size=bs, per_device_eval_batch_size=bs,
        num_train_epochs=1, learning_rate=1e-3, eval_strategy="epoch", report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16", disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=train_rows,
                      eval_dataset=valid_rows, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
print(time.perf_counter() - started)
print(sum(len(row["input_ids"]) for row in train_rows))
"""


def tokens_per_second_row(project: Path, gpus: str, bs: int, dry_run: bool) -> dict:
    """One epoch of the tiny BERT, ours against Hugging Face's Trainer."""
    data_dir = fresh_data(project, "speed")
    precision = "fp32" if dry_run else "bf16"
    ours = checked([sys.executable, "-c", GENERATED, "--gpus", gpus, "--epochs", "1", "--bs", bs,
                    "--bert_type", "models/tiny", "--lr", "1e-3", "--precision", precision,
                    "--data_dir", data_dir], project)
    theirs = checked([sys.executable, "-c", HF_TRAINER.format(date=DATE), data_dir, bs,
                      precision], project)
    our_seconds = float(ours.strip().splitlines()[-1])
    their_seconds, tokens = map(float, theirs.strip().splitlines()[-2:])
    return {"check": "one epoch against HF Trainer", "kind": "bert", "precision": precision,
            "compile": "no",
            "result": f"{tokens / our_seconds:,.0f} against {tokens / their_seconds:,.0f} "
                      f"tokens/s: {their_seconds / our_seconds:.2f}x",
            "seconds": round(our_seconds, 1)}


def table(rows: list[dict], device: str) -> str:
    lines = [f"GPU check on {device}, torch {torch.__version__}", "",
             "| check | kind | precision | compile | result | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['kind']} | {r['precision']} | {r['compile']} | {r['result']} "
              f"| {r['seconds']} |" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU with tiny data, for CI")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("error: no GPU visible; run with --dry-run to check the script on the CPU")
    size = SIZES["dry-run" if args.dry_run else "gpu"]
    gpus = "0" if args.dry_run else "1"
    device = "the CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        recs = render(work / "recs", "recommender")
        checked([sys.executable, "-m", "recs.data", "--synthetic", "--rows", size["ratings"],
                 "--users", size["users"], "--items", size["items"], "--data_date", DATE], recs)
        bert = render(work / "bert", "bert")
        checked([sys.executable, "-m", "bert.data", "--synthetic", "--rows", size["texts"],
                 "--data_date", DATE], bert)
        checked([sys.executable, "-m", "bert.hf", "--tiny-model", "models/tiny"], bert)
        rows = precision_rows(recs, "recs", gpus, size["bs"], args.dry_run, [])
        rows += precision_rows(bert, "bert", gpus, size["bs"], args.dry_run,
                               ["--bert_type", "models/tiny", "--lr", "1e-3"])
        rows.append(kill_and_resume_row(recs, gpus, size["bs"]))
        rows.append(tokens_per_second_row(bert, gpus, size["bs"], args.dry_run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, device))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
