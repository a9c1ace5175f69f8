"""Prepare the text classification data set: ``--synthetic`` or ``--csv FILE``.

This file is yours: point it at your own data. Whatever you change, keep the
output the training loop reads, written by ``save_split``:

    data/{train,valid,test}_text_{date}.csv   columns text,label (label: class index)
    data/index_to_name_{date}.json            {"0": "negative", "1": "neutral", ...}
    data/data_info_{date}.json                {"source": CSV path or "synthetic", "rows": N,
                                              "skipped_rows": N}, by files.save_data_info

Text is stored as text: tokenization happens when training, for the chosen
``--bert_type``, and is cached per tokenizer, so one prepared data set serves
any model.
"""

import argparse
import csv
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from .args import PROJECT_DIR, date_type, fraction, positive_int
from .files import data_file, save_data_info, today, write_atomically
from .tables import DEFAULT_ENCODING, DataError, add_table_args, read_table

# Labels sort by name, so the same label set always gets the same indices.
SYNTHETIC_WORDS = {
    "negative": [
        "terrible",
        "awful",
        "horrible",
        "dreadful",
        "boring",
        "disappointing",
        "poor",
        "miserable",
        "annoying",
        "bland",
    ],
    "neutral": [
        "average",
        "ordinary",
        "acceptable",
        "standard",
        "typical",
        "okay",
        "moderate",
        "fair",
        "plain",
        "usual",
    ],
    "positive": [
        "great",
        "wonderful",
        "excellent",
        "delightful",
        "superb",
        "fantastic",
        "lovely",
        "brilliant",
        "enjoyable",
        "outstanding",
    ],
}
NOUNS = [
    "movie",
    "service",
    "food",
    "staff",
    "product",
    "delivery",
    "hotel",
    "book",
    "app",
    "support",
    "experience",
    "room",
    "concert",
    "course",
    "game",
]
SENTENCES = [
    "the {noun} was {adj}",
    "i found the {noun} {adj}, {filler}",
    "{filler}, a {adj} {noun}",
    "honestly the {noun} felt {adj} and {adj2}",
    "what a {adj} {noun}",
    "{filler} the {noun} is {adj}",
    "my {noun} was {adj} again",
]
FILLERS = ["overall", "to be honest", "i would say", "this time", "as expected", "in the end"]


def make_synthetic(rows: int, seed: int) -> tuple[list[str], list[str]]:
    """Short reviews whose sentiment words decide the label: learnable, not trivial."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(rows):
        label = rng.choice(sorted(SYNTHETIC_WORDS))
        adjective, second = rng.sample(SYNTHETIC_WORDS[label], 2)
        sentence = rng.choice(SENTENCES).format(
            noun=rng.choice(NOUNS), adj=adjective, adj2=second, filler=rng.choice(FILLERS)
        )
        texts.append(sentence)
        labels.append(label)
    return texts, labels


def read_text_csv(
    path: Path,
    sep: str | None = None,
    names: list[str] | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> tuple[list[str], list[str], int]:
    """``text,label`` rows, and how many rows were skipped for having no text.
    Labels may be any strings, text may hold quotes, commas and line breaks."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of your text,label CSV to --csv")
    frame = read_table(path, sep=sep, names=names, encoding=encoding, as_text=True)
    if frame.columns.empty:
        raise DataError(f"{path} is empty; it needs a header line text,label and rows")
    missing = [column for column in ("text", "label") if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(missing)} column (found "
            f"{', '.join(frame.columns)}); make the first line the header "
            "text,label, or rename its columns with --names"
        )
    if frame.empty:
        raise DataError(f"{path} has a header but no rows; add labelled texts to it")
    # A spreadsheet export often ends in, or holds, rows with no text: nothing to learn from.
    has_text = frame["text"].str.strip() != ""
    skipped = int((~has_text).sum())
    frame = frame[has_text]
    if frame.empty:
        raise DataError(f"{path}: all {skipped} rows have empty text; fill the text column")
    labels = frame["label"].str.strip()
    no_label = labels == ""
    if no_label.any():
        line = labels.index[no_label.argmax()]
        raise DataError(f"{path} line {line}: empty label; fix or remove that row")
    return frame["text"].tolist(), labels.tolist(), skipped


def split(texts: list[str], labels: list[str], valid_frac: float, test_frac: float, seed: int):
    """A seeded split that keeps each label's share the same in every part."""
    names = sorted(set(labels))
    if len(names) < 2:
        raise DataError(f"only one label ({names[0]!r}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(names)}
    rows_of = defaultdict(list)
    for row, label in enumerate(labels):
        rows_of[label].append(row)
    rng = random.Random(seed)
    parts = {"train": [], "valid": [], "test": []}
    for label in names:
        rows = rows_of[label]
        rng.shuffle(rows)
        n_valid, n_test = round(len(rows) * valid_frac), round(len(rows) * test_frac)
        if len(rows) - n_valid - n_test < 1:
            raise DataError(
                f"label {label!r} has {len(rows)} row(s): too few to split; "
                "add examples or lower --valid_frac/--test_frac"
            )
        parts["valid"] += rows[:n_valid]
        parts["test"] += rows[n_valid : n_valid + n_test]
        parts["train"] += rows[n_valid + n_test :]
    if not parts["valid"] or not parts["test"]:
        raise DataError(
            f"{len(texts)} rows are too few to hold out a valid and a test set; "
            "add examples or raise --valid_frac/--test_frac"
        )
    splits = {}
    for name, rows in parts.items():
        rng.shuffle(rows)
        splits[name] = [(texts[row], index[labels[row]]) for row in rows]
    return splits, dict(enumerate(names))


def save_split(
    splits: dict,
    index_to_name: dict,
    data_dir: Path,
    data_date: str,
    source: str,
    skipped_rows: int,
) -> list[Path]:
    """The splits, the label names, and where the rows came from (for the run's records)."""
    written = []
    for name, rows in splits.items():

        def write(tmp, rows=rows):
            with open(tmp, "w", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                writer.writerow(["text", "label"])
                writer.writerows(rows)

        path = data_file(data_dir, f"{name}_text", data_date, ".csv")
        written.append(write_atomically(path, write))
    names_path = data_file(data_dir, "index_to_name", data_date, ".json")
    names_json = json.dumps({str(i): name for i, name in index_to_name.items()}, indent=2)
    write_atomically(names_path, lambda tmp: Path(tmp).write_text(names_json + "\n"))
    rows = sum(len(rows) for rows in splits.values())
    info_path = save_data_info(data_dir, data_date, source, rows, skipped_rows)
    return [*written, names_path, info_path]


def load_texts(data_dir: Path, name: str, data_date: str) -> tuple[list[str], list[int]]:
    """The "train", "valid" or "test" texts and label indices written by save_split."""
    with data_file(data_dir, f"{name}_text", data_date, ".csv").open(
        newline="", encoding="utf-8"
    ) as file:
        rows = list(csv.DictReader(file))
    return [row["text"] for row in rows], [int(row["label"]) for row in rows]


def load_label_names(data_dir: Path, data_date: str) -> list[str]:
    names = json.loads(data_file(data_dir, "index_to_name", data_date, ".json").read_text())
    return [names[str(i)] for i in range(len(names))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.data",
        description="Prepare train/valid/test texts and labels in the data folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--synthetic", action="store_true", help="generate a learnable sentiment-like text set"
    )
    source.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="CSV with text,label columns; labels may be any strings",
    )
    parser.add_argument(
        "--rows",
        type=positive_int,
        default=3_000,
        help="texts to generate with --synthetic (default: %(default)s)",
    )
    parser.add_argument(
        "--valid_frac",
        type=fraction,
        default=0.1,
        help="share of each label held out for validation (default: %(default)s)",
    )
    parser.add_argument(
        "--test_frac",
        type=fraction,
        default=0.1,
        help="share of each label held out for testing (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for generation and the split (default: %(default)s)",
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=PROJECT_DIR / "data",
        help="where to write the splits (default: the project's data/)",
    )
    parser.add_argument(
        "--data_date",
        type=date_type,
        default=None,
        help="YYYYMMDD date to stamp the files with (default: today)",
    )
    add_table_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.synthetic:
            texts, labels = make_synthetic(args.rows, args.seed)
            source, skipped = "synthetic", 0
        else:
            texts, labels, skipped = read_text_csv(args.csv, args.sep, args.names, args.encoding)
            source = str(args.csv.resolve())
        splits, index_to_name = split(texts, labels, args.valid_frac, args.test_frac, args.seed)
    except DataError as error:
        sys.exit(f"error: {error}")
    if skipped:
        print(f"skipped {skipped:,} rows with empty text")
    written = save_split(
        splits, index_to_name, args.data_dir, args.data_date or today(), source, skipped
    )
    sizes = ", ".join(f"{name} {len(rows):,}" for name, rows in splits.items())
    print(f"{len(index_to_name)} labels ({', '.join(index_to_name.values())}); texts: {sizes}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
