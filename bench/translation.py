"""Translation comparison: the generated project vs Hugging Face's Seq2SeqTrainer on the same rows.

    python bench/run.py --only translation [--quick]     # seeds 0 1 2 (0 with --quick)
    python bench/translation.py compare --seeds 0 1 2 --json translation.json
    python bench/translation.py compare --seeds 0 -- --lr 1e-3 --bs 32 --group_by_length
    python bench/translation.py compare --lang de         # German: a number is one long word
    python bench/translation.py compare --spread digits   # short and long phrases mixed
    python bench/translation.py compare --pairs 600 --epochs 1 --seeds 0   # a smoke test

Data: English number phrases and their French (or ``--lang``'s), from ``num2words``:
``--pairs`` distinct integers drawn (seeded) from 0 to 999,999 (or, with ``--spread digits``,
each one's digit count drawn first), one row each (``numbers_csv``), written once to
~/.cache/quikgen-bench, outside the repository. No network. Every number is one row, so the
project's random split puts it in exactly one of train, valid and test: the test numbers are
never seen in training (their words are, in other numbers).

Model: the project's tiny random MarianMT (``python -m PKG.hf --tiny-model DIR``, its tokenizer
trained on a split of the same CSV), made once; both sides start from that folder, so from the
same random weights.

Per seed S, the generated project splits the CSV with ``python -m PKG.data --csv FILE --seed S``
and trains with ``python main.py --gpus 0 --model DIR --epochs E --seed S`` plus SETTINGS
(``--lr 1e-3 --bs 32``, 20 epochs; main.py flags after ``--`` replace SETTINGS). HF's
Seq2SeqTrainer then trains the same model on the same train rows (read back from the
project's data/{train,valid,test}_text_{date}.csv) with the values the project's own parser
holds for that command line: learning rate, batch size, epochs, warm-up ratio, linear decay,
weight decay, Adam's betas and epsilon, gradient clipping, label smoothing, --max_length
truncation, random batches or --group_by_length, and seed; DataCollatorForSeq2Seq, no
checkpoints. Like the generated loop, it scores the validation rows' loss after each epoch
(teacher-forced, in batches of the same size, no generation). Both sides then translate the
test rows with the same beams and --max_new_tokens (HF: predict_with_generate), decode them
with skip_special_tokens, and score them with sacrebleu's corpus BLEU and chrF against the
CSV's reference strings. What still differs: the generated project tests its best epoch by
validation loss, HF its last (with no checkpoints there is no best to go back to); a step's
loss weighs each pair's tokens over the split's mean target length, HF's over the batch's
tokens.

A third side, the bare loop, trains the same model on the same split with the training
arithmetic alone (forward, backward, clipping, fused AdamW; the validation loss), its batches
padded before the clock starts: HF's epoch time over the bare loop's is the most that any
loop doing this arithmetic could gain over HF's Trainer.

Epoch time: train + validation seconds per epoch, test translation excluded: the mean over
the epochs (as text.py times HF's Trainer), and the median (robust to a few epochs slowed by
something else on the machine). The generated side's epochs come from its own EpochTimer,
caught at full precision (text.py's ``timed_main``); HF's from a callback, each epoch running
to the next one's start, so with the validation after it. Times only compare side by side,
within one invocation.
"""

import argparse
import csv
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from text import CACHE, project_defaults, rendered_project, run, split_data

# A random tiny MarianMT needs more than the project's 5e-5. At 1e-3, batches of 32 and 20
# epochs of 4,000 pairs (about 3 seconds an epoch on 2 CPU cores), both sides reach BLEU near
# 100.
SETTINGS = ["--lr", "1e-3", "--bs", "32"]
EPOCHS = 20
PAIRS = 5_000
SIDES = ("generated", "hf_trainer", "bare_loop")


def numbers_csv(pairs: int = PAIRS, seed: int = 0, lang: str = "fr", spread: str = "uniform",
                cache: Path = CACHE) -> Path:
    """``pairs`` distinct integers below a million, drawn with ``seed``, as a source,target
    CSV of their words in English and in ``lang`` (``num2words``); written once. ``spread``:
    "uniform" draws from 0 to 999,999, so nearly every number has six digits and the phrases
    are of similar length; "digits" draws each number's digit count (1 to 6) first, so short
    and long phrases mix (small numbers run out: there are only 10 of one digit)."""
    out = cache / f"numbers_en_{lang}_{pairs}_{seed}{'' if spread == 'uniform' else '_' + spread}.csv"
    if out.is_file():
        return out
    from num2words import num2words

    draw = random.Random(seed)
    if spread == "uniform":
        numbers = draw.sample(range(1_000_000), pairs)
    else:
        chosen = set()
        while len(chosen) < pairs:
            digits = draw.randint(1, 6)
            chosen.add(draw.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits))
        numbers = draw.sample(sorted(chosen), pairs)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["source", "target"])
        writer.writerows((num2words(n, lang="en"), num2words(n, lang=lang)) for n in numbers)
    tmp.rename(out)
    return out


def read_split(data_dir: Path, name: str) -> tuple[list[str], list[str]]:
    [path] = sorted(Path(data_dir).glob(f"{name}_text_*.csv"))[-1:]
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [row["source"] for row in rows], [row["target"] for row in rows]


def scores(hypotheses: list[str], references: list[str]) -> dict:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


def hf_trainer(data_dir: Path, model_dir: str, seed: int, epochs: int, settings: dict) -> dict:
    """HF's Seq2SeqTrainer on the project's split: test BLEU and chrF, train + validation
    seconds. ``settings``: bs, lr, warmup_ratio, weight_decay, betas, eps, clip_grad,
    label_smoothing, max_length, group_by_length, num_beams, max_new_tokens (the project's
    values)."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        logging,
        set_seed,
    )

    marks = []

    class EpochClock(TrainerCallback):
        """When each epoch starts, and when training ends: an epoch's seconds run to the
        next one's start, so they include the validation after it, as the generated
        project's EpochTimer does."""

        def on_epoch_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def dataset(name):
        sources, targets = read_split(data_dir, name)
        encoded = tokenizer(sources, text_target=targets, truncation=True,
                            max_length=settings["max_length"])
        return [{"input_ids": ids, "attention_mask": mask, "labels": labels} for ids, mask, labels
                in zip(encoded["input_ids"], encoded["attention_mask"], encoded["labels"],
                       strict=True)], targets

    (train, _), (valid, _), (test, references) = map(dataset, ("train", "valid", "test"))
    set_seed(seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as out:
        trainer = Seq2SeqTrainer(
            model=model,
            args=Seq2SeqTrainingArguments(
                output_dir=out, learning_rate=settings["lr"],
                per_device_train_batch_size=settings["bs"],
                per_device_eval_batch_size=settings["bs"], num_train_epochs=epochs, seed=seed,
                lr_scheduler_type="linear", warmup_steps=settings["warmup_ratio"],
                weight_decay=settings["weight_decay"], adam_beta1=settings["betas"][0],
                adam_beta2=settings["betas"][1], adam_epsilon=settings["eps"],
                max_grad_norm=settings["clip_grad"],
                label_smoothing_factor=settings["label_smoothing"],
                eval_strategy="epoch", prediction_loss_only=True, save_strategy="no",
                logging_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                train_sampling_strategy=("group_by_length" if settings["group_by_length"]
                                         else "random"),
                disable_tqdm=True, predict_with_generate=True,
                generation_num_beams=settings["num_beams"]),
            train_dataset=train, eval_dataset=valid, processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=[EpochClock()])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        # Validation during training scored the loss only; the test rows are translated, in
        # their order (transformers 5 groups evaluation batches by length too, where
        # training's are: its predictions would no longer line up with the references).
        trainer.args.prediction_loss_only = False
        trainer.args.train_sampling_strategy = "random"
        start = time.perf_counter()
        predictions = trainer.predict(test, max_new_tokens=settings["max_new_tokens"],
                                      num_beams=settings["num_beams"]).predictions
        test_seconds = time.perf_counter() - start
    predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
    # Decoded as the generated project decodes its translations.
    hypotheses = [text.strip() for text in tokenizer.batch_decode(predictions,
                                                                  skip_special_tokens=True)]
    return {"seconds": seconds, "epochs_run": epochs, "test_s": test_seconds,
            "epoch_seconds": [end - start for start, end in itertools.pairwise(marks)],
            **scores(hypotheses, references), "examples": hypotheses[:3]}


def bare_loop(data_dir: Path, model_dir: str, seed: int, epochs: int, settings: dict) -> dict:
    """The arithmetic that both trainers share, and nothing else: each epoch, forward,
    backward, clipping and a fused AdamW step on random batches of the train rows padded to
    their longest pair, then the loss of the validation rows; every batch tokenized and
    padded before the clock starts, no schedule, no logging, no checkpoint, no translation.
    Its epoch seconds are what any loop needs to train this model on these rows, so HF's
    epoch over them bounds how much faster than HF's Trainer a loop can be."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    pad, start_id = tokenizer.pad_token_id, model.config.decoder_start_token_id

    def encoded(name):
        sources, targets = read_split(data_dir, name)
        return tokenizer(sources, text_target=targets, truncation=True,
                         max_length=settings["max_length"])

    def batches(rows, order):
        for first in range(0, len(order), settings["bs"]):
            chosen = order[first:first + settings["bs"]]
            ids, labels = ([rows[key][i] for i in chosen] for key in ("input_ids", "labels"))
            source = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(row) for row in ids], batch_first=True, padding_value=pad)
            target = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(row) for row in labels], batch_first=True, padding_value=-100)
            decoder_input = torch.cat([torch.full_like(target[:, :1], start_id),
                                       target[:, :-1].masked_fill(target[:, :-1] < 0, pad)], 1)
            yield source, source != pad, decoder_input, target

    def loss(source, mask, decoder_input, target):
        logits = model(input_ids=source, attention_mask=mask,
                       decoder_input_ids=decoder_input).logits
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)

    train, valid = encoded("train"), encoded("valid")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"],
                                  betas=settings["betas"], eps=settings["eps"],
                                  weight_decay=settings["weight_decay"], fused=True)
    valid_batches = list(batches(valid, range(len(valid["input_ids"]))))
    epoch_seconds = []
    for epoch in range(epochs):
        order = torch.randperm(len(train["input_ids"]),
                               generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        train_batches = list(batches(train, order))
        start = time.perf_counter()
        model.train()
        for batch in train_batches:
            loss(*batch).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_grad"])
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            for batch in valid_batches:
                loss(*batch)
        epoch_seconds.append(time.perf_counter() - start)
    return {"seconds": sum(epoch_seconds), "epochs_run": epochs, "epoch_seconds": epoch_seconds}


def generated(project: Path, package: str, data_dir: Path, model_dir: str, seed: int,
              epochs: int, extra: list[str] = ()) -> dict:
    """``python main.py``: test BLEU and chrF from its metrics table, and the train +
    validation seconds of its epochs (saving and testing excluded)."""
    start = time.perf_counter()
    out = run(sys.executable, Path(__file__).with_name("text.py"), "generated", package,
              "--gpus", "0", "--model", model_dir, "--epochs", epochs, "--seed", seed,
              "--data_dir", data_dir, *extra, cwd=project)
    wall = time.perf_counter() - start
    epoch_seconds = json.loads(out.strip().splitlines()[-1])["epoch_seconds"]
    [metrics] = sorted(Path(data_dir).glob("runs/*/metrics_*.csv"))[-1:]
    with metrics.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    test = next(row for row in rows if row.get("test_bleu"))
    [sample] = sorted(metrics.parent.glob("translations_*.csv"))[-1:]
    with sample.open(newline="", encoding="utf-8") as file:
        examples = [row["translation"] for row in itertools.islice(csv.DictReader(file), 3)]
    return {"seconds": sum(epoch_seconds), "epochs_run": len(epoch_seconds), "wall_s": wall,
            "epoch_seconds": epoch_seconds,
            "bleu": float(test["test_bleu"]), "chrf": float(test["test_chrf"]),
            "examples": examples}


def hf_settings(defaults) -> dict:
    """What HF's side needs from the project's parsed flags."""
    return {"bs": defaults.bs, "lr": defaults.lr, "warmup_ratio": defaults.warmup_ratio,
            "weight_decay": defaults.weight_decay, "betas": list(defaults.betas),
            "eps": defaults.eps, "clip_grad": defaults.clip_grad,
            "label_smoothing": defaults.label_smoothing, "max_length": defaults.max_length,
            "group_by_length": defaults.group_by_length,
            "num_beams": defaults.num_beams, "max_new_tokens": defaults.max_new_tokens}


def tiny_model(project: Path, package: str, csv_file: Path, out: Path | None = None) -> str:
    """The project's tiny random MarianMT, its tokenizer trained on a split of these pairs;
    made once."""
    model_dir = out or project / "models" / f"tiny-marian-{Path(csv_file).stem}"
    if not Path(model_dir).is_dir():
        seed_dir = project / "data" / f"tiny-tokenizer-{Path(csv_file).stem}"
        run(sys.executable, "-m", f"{package}.data", "--csv", csv_file, "--data_dir", seed_dir,
            cwd=project)
        run(sys.executable, "-m", f"{package}.hf", "--tiny-model", model_dir,
            "--data_dir", seed_dir, cwd=project)
    return str(model_dir)


def compare(project: Path, package: str, csv_file: Path, model_dir: str, seeds: list[int],
            epochs: int = EPOCHS, sides=SIDES, extra: list[str] = SETTINGS, log=print) -> dict:
    """Every side on every seed's split; per side the runs and their means, and HF's epoch
    time over each other side's (of the means)."""
    settings = hf_settings(project_defaults(project, package, ["--model", model_dir, *extra]))
    sides = list(sides)
    runs = {side: [] for side in sides}
    for index, seed in enumerate(seeds):
        data_dir = split_data(project, package, csv_file, seed)
        # Which side goes first alternates from seed to seed: this machine's speed drifts by
        # a fifth or more over minutes, and the side always run first would take the drift.
        for side in sides if index % 2 == 0 else sides[::-1]:
            if side == "generated":
                result = generated(project, package, data_dir, model_dir, seed, epochs, extra)
            else:
                out = run(sys.executable, __file__, {"hf_trainer": "hf", "bare_loop": "bare"}[side],
                          "--data_dir", data_dir, "--model", model_dir, "--seed", seed,
                          "--epochs", epochs, "--settings", json.dumps(settings), cwd=project)
                result = json.loads(out.strip().splitlines()[-1])
            result["epoch_s"] = result["seconds"] / result["epochs_run"]
            # Robust to a few epochs slowed by something else on the machine.
            result["median_epoch_s"] = statistics.median(result["epoch_seconds"])
            runs[side].append(result)
            log(f"seed {seed} {side}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                if k != "epoch_seconds"))
    summary = {"settings": settings, "extra": list(extra), "epochs": epochs, "seeds": list(seeds),
               "pairs_csv": str(csv_file), "model_dir": model_dir}
    for side, results in runs.items():
        summary[side] = {key: statistics.mean(r[key] for r in results)
                         for key in ("bleu", "chrf", "epoch_s", "median_epoch_s")
                         if key in results[0]}
        summary[side]["runs"] = results
    if "hf_trainer" in runs:
        # HF's epoch over each other side's: over the bare loop's, the most any loop can get.
        for side in [side for side in runs if side != "hf_trainer"]:
            for key in ("epoch_s", "median_epoch_s"):
                summary[f"hf_trainer_over_{side}_{key}"] = (summary["hf_trainer"][key]
                                                            / summary[side][key])
        if "generated" in runs:
            summary["bleu_minus_hf_trainer"] = (summary["generated"]["bleu"]
                                                - summary["hf_trainer"]["bleu"])
    return summary


def table(summary: dict) -> str:
    """A markdown table: per seed and the means, each side's test BLEU, chrF and epoch
    seconds, and HF's epoch seconds over each other side's."""
    names = {"generated": "generated", "hf_trainer": "HF Seq2SeqTrainer",
             "bare_loop": "bare loop (arithmetic only)"}
    sides = [side for side in names if side in summary]
    lines = ["| seed | side | test BLEU | test chrF | epoch s | HF epoch s / this side's |",
             "|---|---|---|---|---|---|"]
    for index, seed in [*enumerate(summary["seeds"]), (None, "mean")]:
        results = {side: summary[side] if index is None else summary[side]["runs"][index]
                   for side in sides}
        for side, result in results.items():
            ratio = ("" if side == "hf_trainer" or "hf_trainer" not in results
                     else f"{results['hf_trainer']['epoch_s'] / result['epoch_s']:.2f}")
            bleu, chrf = (f"{result[key]:.2f}" if key in result else "" for key in ("bleu", "chrf"))
            lines.append(f"| {seed} | {names[side]} | {bleu} | {chrf} | {result['epoch_s']:.2f} "
                         f"| {ratio} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data_dir", type=Path, required=True)
    common.add_argument("--model", required=True)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--epochs", type=int, default=1)
    common.add_argument("--settings", type=json.loads, required=True,
                        help="JSON: the project's values (see hf_settings)")
    commands.add_parser("hf", parents=[common],
                        help="one Seq2SeqTrainer run on a prepared split (prints JSON)")
    commands.add_parser("bare", parents=[common],
                        help="the training arithmetic alone on a prepared split (prints JSON)")
    cmp = commands.add_parser("compare", help="generated project vs Seq2SeqTrainer, per seed")
    cmp.add_argument("--pairs", type=int, default=PAIRS,
                     help="number pairs in the data (default: %(default)s)")
    cmp.add_argument("--spread", choices=("uniform", "digits"), default="uniform",
                     help="uniform: numbers from 0 to 999,999 (phrases of similar length); "
                     "digits: each number's digit count drawn first (short and long phrases)")
    cmp.add_argument("--lang", default="fr",
                     help="the target language, as num2words names it: fr, de, es, ... "
                     "(default: %(default)s)")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cmp.add_argument("--epochs", type=int, default=EPOCHS)
    cmp.add_argument("--sides", nargs="+", choices=SIDES,
                     default=list(SIDES), help="who trains (default: %(default)s)")
    cmp.add_argument("--project", type=Path, help="an already rendered translation project")
    cmp.add_argument("--model", help="a model folder to start from (default: the project's "
                     "tiny MarianMT, made once in the project)")
    cmp.add_argument("--json", type=Path, help="write the summary here")
    cmp.add_argument("extra", nargs="*", help=f"main.py flags, after -- (default: "
                     f"{' '.join(SETTINGS)})")
    args = parser.parse_args()

    if args.command in ("hf", "bare"):
        side = hf_trainer if args.command == "hf" else bare_loop
        print(json.dumps(side(args.data_dir, args.model, args.seed, args.epochs, args.settings)))
        return
    with rendered_project("translation", "translationbench", args.project) as project:
        package = next(p.parent.name for p in project.glob("*/data.py"))
        csv_file = numbers_csv(args.pairs, lang=args.lang, spread=args.spread)
        model_dir = args.model or tiny_model(project, package, csv_file)
        summary = compare(project, package, csv_file, model_dir, args.seeds, args.epochs,
                          args.sides, args.extra or SETTINGS,
                          log=lambda m: print(m, file=sys.stderr))
    print(table(summary), file=sys.stderr)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
