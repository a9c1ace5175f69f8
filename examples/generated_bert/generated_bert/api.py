"""Batched inference against the served model: ``python -m generated_bert.api FILE --out OUT``.

FILE is a CSV of records (see serving.read_records); OUT gets one row per record,
in input order, with its prediction (serving.prediction_row).

Records travel in batches (one request each), at most --workers requests at a
time. A request the server answers with a status it gives while restarting, or
that cannot connect, is retried with backoff, so a server restarted mid-run only
slows the run down; how a request reaches the server (a token, say) is the
engine's (ray_serve.post_batch). Rows are placed by record index, so
a batch retried after the server scored it still appears once. Nothing is lost
silently: if a batch still fails, the scored records are written and the error
names the records that were not.
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import ray_serve as engine
from .args import UsageError, non_negative_int, positive_int
from .serving import RECORDS_HELP, prediction_row, read_records

DEFAULT_URL = f"http://127.0.0.1:8080/predictions/{engine.MODEL_NAME}"


class BatchInferenceError(RuntimeError):
    """Some records were not scored; ``scored`` holds the ones that were."""

    def __init__(self, message: str, scored: pd.DataFrame, failed: list[int]):
        super().__init__(message)
        self.scored, self.failed = scored, failed


def session_with_retries(retries: int, workers: int) -> requests.Session:
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=engine.RETRIED_STATUS,
        allowed_methods=frozenset({"POST"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 7] -> '0-2, 7'"""
    spans, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            spans.append(f"{start}-{index}" if index != start else f"{start}")
            start = None
    return ", ".join(spans)


def batch_inference(
    records: list,
    batch_size: int = 50,
    url: str = DEFAULT_URL,
    workers: int = 4,
    retries: int = 5,
    timeout: float = 60,
    **server_options,
) -> pd.DataFrame:
    """Score ``records`` (as serving.read_records returns them) in batches: a row per
    record, in order. ``server_options`` go to the engine's post_batch (TorchServe:
    ``key_file``)."""
    session = session_with_retries(retries, workers)
    starts = list(range(0, len(records), batch_size))

    def score(start: int):
        batch = records[start : start + batch_size]
        try:
            response = engine.post_batch(session, url, batch, timeout, retries, **server_options)
            response.raise_for_status()
            return response.json(), None
        except requests.ConnectionError:
            return (
                None,
                f"cannot reach {url}; start the server (python -m {__package__}.serve "
                "start) or pass --url",
            )
        except (requests.RequestException, ValueError) as error:
            return None, error

    with ThreadPoolExecutor(max_workers=workers) as pool:  # at most `workers` requests in flight
        answers = list(pool.map(score, starts))

    rows, failed, reasons = [], [], []
    for start, (predictions, error) in zip(starts, answers, strict=True):
        batch = records[start : start + batch_size]
        if error is not None or len(predictions) != len(batch):
            failed.extend(range(start, start + len(batch)))
            reasons.append(str(error or f"{len(predictions)} answers for {len(batch)} records"))
            continue
        for offset, (record, prediction) in enumerate(zip(batch, predictions, strict=True)):
            rows.append({"index": start + offset, **prediction_row(record, prediction)})
    scored = pd.DataFrame(rows).set_index("index") if rows else pd.DataFrame()
    if failed:
        raise BatchInferenceError(
            f"{len(failed)} of {len(records)} records were not scored (records {ranges(failed)}): "
            f"{reasons[0][:200]}",
            scored,
            failed,
        )
    return scored


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.api",
        description=f"Score a file of records with the model {engine.NAME} serves.",
    )
    parser.add_argument("file", type=Path, help=RECORDS_HELP)
    parser.add_argument("--out", type=Path, required=True, help="CSV to write the predictions to")
    parser.add_argument("--url", default=DEFAULT_URL, help="prediction URL (default: %(default)s)")
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=50,
        help="records per request (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=4,
        help="requests in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=5,
        help="retries of a failed request, with backoff (default: %(default)s)",
    )
    engine.add_client_flags(parser)
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():  # found out now, not after scoring every record
        sys.exit(
            f"error: --out {args.out}: no folder {args.out.parent}; create it or pass another --out"
        )
    try:
        # Every cell as written: an empty text stays "", and "NA" stays a text.
        records = read_records(pd.read_csv(args.file, keep_default_na=False), args.file)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        sys.exit(f"error: cannot read {args.file}: {error}")
    except UsageError as error:
        sys.exit(f"error: {error}")
    try:
        scored = batch_inference(
            records,
            batch_size=args.batch_size,
            url=args.url,
            workers=args.workers,
            retries=args.retries,
            **asdict(engine.ClientSettings.pick(vars(args))),
        )
    except BatchInferenceError as error:
        error.scored.to_csv(args.out)
        sys.exit(f"error: {error}; the {len(error.scored)} scored records are in {args.out}")
    scored.to_csv(args.out)
    print(f"scored {len(scored)} records into {args.out}")


if __name__ == "__main__":
    main()
