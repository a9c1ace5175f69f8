"""Batched inference against the Ray Serve model: ``python -m generated_bert.api FILE --out OUT``.

FILE is a CSV with a ``text`` column. OUT gets one row per input, in input
order: the text, the predicted label, and each label's probability and logit.

Records travel in batches (one request each), at most --workers requests at a
time. A request the server answers 500, 503 or 507, or that cannot connect, is
retried with backoff, so a Ray Serve restarted mid-run only slows the run down
(404 too: a restarting Ray Serve listens a moment before its route exists).
Rows are placed by record index, so a batch retried after the server scored it
still appears once.
Nothing is lost silently: if a batch still fails, the scored records are written
and the error names the records that were not.
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .args import non_negative_int, positive_int

DEFAULT_URL = "http://127.0.0.1:8080/predictions/generated_bert"
# What a server that is starting or restarting answers: retried with backoff.
RETRIED_STATUS = (404, 500, 503, 507)


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
        status_forcelist=RETRIED_STATUS,
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
    index_labels: list[str] | None = None,
    batch_size: int = 50,
    url: str = DEFAULT_URL,
    workers: int = 4,
    retries: int = 5,
    timeout: float = 60,
) -> pd.DataFrame:
    """Score ``records`` (texts) in batches: a row per record, in order.
    ``index_labels`` orders the probability and logit columns (default: as served)."""
    session = session_with_retries(retries, workers)
    starts = list(range(0, len(records), batch_size))

    def score(start: int):
        try:
            response = session.post(url, json=records[start : start + batch_size], timeout=timeout)
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
            labels = index_labels or list(prediction["probabilities"])
            row = {"index": start + offset, "text": record, "label": prediction["label"]}
            row.update({f"prob_{name}": prediction["probabilities"][name] for name in labels})
            row.update(
                {
                    f"logit_{name}": logit
                    for name, logit in zip(
                        list(prediction["probabilities"]), prediction["logits"], strict=True
                    )
                }
            )
            rows.append(row)
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
        description="Score a file of records with the served model.",
    )
    parser.add_argument("file", type=Path, help="CSV with a text column")
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
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():  # found out now, not after scoring every record
        sys.exit(
            f"error: --out {args.out}: no folder {args.out.parent}; create it or pass another --out"
        )
    try:
        # Every cell as written: an empty text stays "", and "NA" stays a text.
        frame = pd.read_csv(args.file, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        sys.exit(f"error: cannot read {args.file}: {error}")
    if "text" not in frame.columns:
        sys.exit(f"error: {args.file} has no text column; name the column of texts 'text'")
    records = frame["text"].astype(str).tolist()
    try:
        scored = batch_inference(
            records,
            batch_size=args.batch_size,
            url=args.url,
            workers=args.workers,
            retries=args.retries,
        )
    except BatchInferenceError as error:
        error.scored.to_csv(args.out)
        sys.exit(f"error: {error}; the {len(error.scored)} scored records are in {args.out}")
    scored.to_csv(args.out)
    print(f"scored {len(scored)} records into {args.out}")


if __name__ == "__main__":
    main()
