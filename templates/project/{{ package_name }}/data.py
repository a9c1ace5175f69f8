"""Prepare the ratings data set: ``python -m PKG.data --synthetic`` or ``--csv FILE``.

This file is yours: point it at your own data. Whatever you change, keep the
output the training loop reads, written by ``save_split``:

    data/{train,valid,test}_tensor_{date}.pt   dicts of equal-length tensors:
        user   (int64, 0..num_users-1)
        item   (int64, 0..num_items-1)
        rating (float32)
    data/id_maps_{date}.json   {"users": [original user ids], "items": [...]},
        so that index i means the i-th original id.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from .args import PROJECT_DIR, date_type, positive_int
from .files import data_file, load_torch, save_torch, today, write_atomically

USER_COLUMNS = ("userId", "user")
ITEM_COLUMNS = ("movieId", "itemId", "item")
RATING_COLUMNS = ("rating",)


class DataError(ValueError):
    """Bad input data; the message says what is wrong and how to fix it."""


def make_synthetic(rows: int, users: int, items: int, seed: int, factors: int = 8):
    """Ratings drawn from a latent-factor model, so a model can learn them.

    rating = 3.5 + user bias + item bias + <user factors, item factors> + noise,
    clipped to MovieLens' range [0.5, 5].
    """
    generator = torch.Generator().manual_seed(seed)
    user_factors = 0.53 * torch.randn(users, factors, generator=generator)
    item_factors = 0.53 * torch.randn(items, factors, generator=generator)
    user_bias = 0.4 * torch.randn(users, generator=generator)
    item_bias = 0.4 * torch.randn(items, generator=generator)
    user = torch.randint(users, (rows,), generator=generator)
    item = torch.randint(items, (rows,), generator=generator)
    signal = (user_factors[user] * item_factors[item]).sum(dim=1)
    noise = 0.3 * torch.randn(rows, generator=generator)
    rating = (3.5 + user_bias[user] + item_bias[item] + signal + noise).clamp(0.5, 5.0)
    tensors = {"user": user, "item": item, "rating": rating}
    id_maps = {"users": list(range(users)), "items": list(range(items))}
    return tensors, id_maps


def _pick_column(columns, candidates, what):
    for name in candidates:
        if name in columns:
            return name
    raise DataError(
        f"no {what} column: expected one of {', '.join(candidates)}, found "
        f"{', '.join(map(str, columns)) or 'none'}; rename the column in the CSV header"
    )


def read_ratings_csv(path: Path):
    """Ratings from a MovieLens-style CSV: userId,movieId,rating[,timestamp]
    (user,item,rating works too). Ids may be any sparse numbers or strings."""
    import numpy as np
    import pandas as pd  # imported here: only CSV preparation needs pandas

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of your ratings CSV to --csv")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty; it needs a header line userId,movieId,rating and rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV file ({error}); check its format") from None
    user_col = _pick_column(frame.columns, USER_COLUMNS, "user")
    item_col = _pick_column(frame.columns, ITEM_COLUMNS, "item")
    rating_col = _pick_column(frame.columns, RATING_COLUMNS, "rating")
    if frame.empty:
        raise DataError(f"{path} has a header but no rows; add ratings to it")
    ratings = pd.to_numeric(frame[rating_col], errors="coerce").to_numpy(dtype="float64")
    not_numbers = ~np.isfinite(ratings)
    if not_numbers.any():
        first = int(not_numbers.argmax())
        raise DataError(
            f"{path} line {first + 2}: rating {frame[rating_col].iloc[first]!r} is not a number; "
            "fix or remove that row"  # line + 2: the header, and lines count from 1
        )
    missing_ids = (frame[user_col].isna() | frame[item_col].isna()).to_numpy()
    if missing_ids.any():
        first = int(missing_ids.argmax())
        raise DataError(
            f"{path} line {first + 2}: the user or item id is empty; fix or remove that row"
        )

    user_codes, user_ids = pd.factorize(frame[user_col], sort=True)
    item_codes, item_ids = pd.factorize(frame[item_col], sort=True)
    tensors = {
        "user": torch.tensor(user_codes, dtype=torch.int64),
        "item": torch.tensor(item_codes, dtype=torch.int64),
        "rating": torch.tensor(ratings, dtype=torch.float32),
    }
    id_maps = {"users": user_ids.tolist(), "items": item_ids.tolist()}
    return tensors, id_maps


def split(tensors: dict, valid_frac: float, test_frac: float, seed: int):
    """A seeded random train/valid/test split of the rows."""
    rows = len(tensors["rating"])
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    n_valid, n_test = int(rows * valid_frac), int(rows * test_frac)
    if rows - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise DataError(
            f"{rows} rows are too few to split into train, valid and test; "
            "use more rows or other --valid_frac/--test_frac"
        )
    parts = {
        "valid": order[:n_valid],
        "test": order[n_valid:n_valid + n_test],
        "train": order[n_valid + n_test:],
    }
    return {name: {key: t[idx] for key, t in tensors.items()} for name, idx in parts.items()}


def save_split(splits: dict, id_maps: dict, data_dir: Path, data_date: str) -> list[Path]:
    written = [
        save_torch(tensors, data_file(data_dir, f"{name}_tensor", data_date))
        for name, tensors in splits.items()
    ]
    maps_path = data_file(data_dir, "id_maps", data_date, ".json")
    write_atomically(maps_path, lambda tmp: Path(tmp).write_text(json.dumps(id_maps)))
    return [*written, maps_path]


def load_split(data_dir: Path, name: str, data_date: str, device="cpu") -> dict:
    """The "train", "valid" or "test" tensors written by save_split."""
    return load_torch(data_file(data_dir, f"{name}_tensor", data_date), device)


def load_id_maps(data_dir: Path, data_date: str) -> dict:
    return json.loads(data_file(data_dir, "id_maps", data_date, ".json").read_text())


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.data",
        description="Prepare train/valid/test rating tensors in the data folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true",
                        help="generate a learnable latent-factor ratings set")
    source.add_argument("--csv", type=Path, metavar="FILE",
                        help="MovieLens-style CSV with userId,movieId,rating columns")
    parser.add_argument("--rows", type=positive_int, default=100_000,
                        help="ratings to generate with --synthetic (default: %(default)s)")
    parser.add_argument("--users", type=positive_int, default=1_000,
                        help="users to generate with --synthetic (default: %(default)s)")
    parser.add_argument("--items", type=positive_int, default=500,
                        help="items to generate with --synthetic (default: %(default)s)")
    parser.add_argument("--valid_frac", type=_fraction, default=0.1,
                        help="share of rows held out for validation (default: %(default)s)")
    parser.add_argument("--test_frac", type=_fraction, default=0.1,
                        help="share of rows held out for the final test (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for generation and the split (default: %(default)s)")
    parser.add_argument("--data_dir", type=Path, default=PROJECT_DIR / "data",
                        help="where to write the tensors (default: the project's data/)")
    parser.add_argument("--data_date", type=date_type, default=None,
                        help="YYYYMMDD date to stamp the files with (default: today)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.synthetic:
            tensors, id_maps = make_synthetic(args.rows, args.users, args.items, args.seed)
        else:
            tensors, id_maps = read_ratings_csv(args.csv)
        splits = split(tensors, args.valid_frac, args.test_frac, args.seed)
    except DataError as error:
        sys.exit(f"error: {error}")
    written = save_split(splits, id_maps, args.data_dir, args.data_date or today())
    sizes = ", ".join(f"{name} {len(t['rating']):,}" for name, t in splits.items())
    print(f"{len(id_maps['users']):,} users, {len(id_maps['items']):,} items; rows: {sizes}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
