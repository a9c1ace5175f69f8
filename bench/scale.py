"""The recommender at its users' scale: speed and memory against catalogue size and rows.

The ``scale`` part of ``python bench/run.py --only scale [--quick]`` (issue 27). One rendered
recommender at its defaults (batch 256, embedding dim 64, ``--save_every`` as it comes), one
epoch per run, ``OMP_NUM_THREADS=1``, driven as a user drives it:

    python -m PKG.data --csv ratings.csv --data_dir D     # timed, its peak memory polled
    python main.py --gpus 0 --epochs 1 --data_dir D       # the same, and its steps/s
    python main.py --gpus 0 --epochs 1 --data_dir D --procs 2   # on the largest set only

against catalogue size (MovieLens 100k's, 1M's and 25M's id spaces at the same rows) and
against rows (at 25M's id space); then Surprise's SVD (default parameters, ``random_state=0``)
fitted on the project's training rows of the smaller row counts, read back from its
``data/train_tensor_*.pt``, in a process of its own.

Data: synthetic ratings shaped like MovieLens 25M's ``ratings.csv`` (userId,movieId,rating,
timestamp; sparse movieIds, ratings 0.5-5 in half stars), written with numpy and pyarrow into
~/.cache/quikgen-bench/scale (or $QUIKGEN_BENCH_CACHE), never into the repository, and reused
by later runs. Every id of the space appears at least once; the other rows draw their ids by
popularity, p(k) ~ (k + q)^-a for the k-th most popular id (Zipf-Mandelbrot), so that a batch
looks up the popular rows again and again, as real ratings do.

Measured per run:
- steps/s: from the project's progress bar (stderr), the steps between its first update and
  its last (n == total) over the seconds between them: the training steps alone, mid-epoch
  checkpoints included, start-up and validation not;
- epoch_s: from its "N process(es) x batch ..." line to its metrics table (stdout): the
  epoch's training, validation and end-of-epoch saves;
- peak memory of the whole process tree (main.py and, with --procs, its ranks), polled every
  0.2 s with psutil: the sum of RSS (shared pages counted in every process that maps them) and
  of PSS (a shared page split among its processes, so counted once in the sum); up to the
  metrics table (training) and over the whole run (with the test and its report); and the
  kernel's peak RSS of the largest single process (wait4's ru_maxrss, not sampled).
Memory is in MB (10^6 bytes).

    python bench/scale.py csv --users 162541 --items 59047 --rows 25000095   # just the CSV
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("QUIKGEN_BENCH_CACHE", Path.home() / ".cache" / "quikgen-bench"))
# users, items, and the highest movieId, of MovieLens' releases (ids sparse as there).
ID_SPACES = {
    "ml-100k": (943, 1_682, 1_682),
    "ml-1m": (6_040, 3_706, 3_952),
    "ml-25m": (162_541, 59_047, 209_171),
}
ML25M_ROWS = 25_000_095
SIZES = {
    "full": {"catalogue_rows": 2_000_000, "rows": (1_000_000, 5_000_000, ML25M_ROWS),
             "svd_rows": (1_000_000, 5_000_000)},
    "quick": {"catalogue_rows": 500_000, "rows": (500_000, 1_000_000),
              "svd_rows": (500_000, 1_000_000)},
}
# Popularity (a, q): at 25M rows the top user has 0.12% of the rows (ML-25M's: 0.13%), the top
# movie 0.27% (ML-25M's: 0.33%) and the top 1% of movies 44% of the rows.
USER_POPULARITY = (0.5, 0)
ITEM_POPULARITY = (1.2, 100)
# ML-25M's timestamps span 1995-01-09 to 2019-11-21.
TIMESTAMPS = (789_652_009, 1_574_327_703)
GENERATOR = 1
PROJECT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_S = 0.2
MB = 1e6
TIMEOUT_S = 4 * 3600


# ---------------------------------------------------------------- data

def popular_ids(rng, n: int, rows: int, a: float, q: float) -> np.ndarray:
    """``rows`` ids in 0..n-1: each id once, the rest drawn with p(k) ~ (k + q)^-a for the
    id of popularity rank k (ranks given to ids at random), in random order."""
    if rows < n:
        raise ValueError(f"{rows} rows cannot hold each of {n} ids once")
    weights = (np.arange(1, n + 1) + q) ** -a
    drawn = rng.choice(n, size=rows - n, p=weights / weights.sum())
    ids = rng.permutation(n)[np.concatenate([np.arange(n), drawn])].astype(np.int32)
    rng.shuffle(ids)
    return ids


def ratings_csv(users: int, items: int, max_movie_id: int, rows: int, seed: int = 0,
                cache: Path = CACHE) -> Path:
    """A MovieLens-25M-shaped ratings.csv, written once into the cache (into a private file,
    then moved into place, so a concurrent reader never sees half a file)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # GENERATOR in the name: a change to the generator must not reuse an older file.
    out = cache / "scale" / f"ratings_v{GENERATOR}_{users}x{items}_{max_movie_id}_{rows}_seed{seed}.csv"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    user = popular_ids(rng, users, rows, *USER_POPULARITY)
    item = popular_ids(rng, items, rows, *ITEM_POPULARITY)
    movie_ids = np.sort(rng.choice(max_movie_id, size=items, replace=False) + 1)
    # Half stars around ML-25M's mean (3.53) and spread (1.06): a user bias, an item bias, noise.
    score = (3.53 + rng.normal(0, 0.45, users).astype(np.float32)[user]
             + rng.normal(0, 0.5, items).astype(np.float32)[item]
             + rng.normal(0, 0.85, rows).astype(np.float32))
    stars = np.clip(np.rint(score * 2), 1, 10).astype(np.int8) - 1  # 0.5 .. 5.0 as 0 .. 9
    del score
    rating = pa.DictionaryArray.from_arrays(pa.array(stars),
                                            pa.array([f"{0.5 * (i + 1):.1f}" for i in range(10)]))
    table = pa.table({
        "userId": pa.array(user + 1),
        "movieId": pa.array(movie_ids[item]),
        "rating": rating,
        "timestamp": pa.array(rng.integers(*TIMESTAMPS, size=rows, endpoint=True)),
    })
    del user, item, stars
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as file:
            file.write(b"userId,movieId,rating,timestamp\n")
            pacsv.write_csv(table, file, pacsv.WriteOptions(include_header=False,
                                                            quoting_style="none"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- watching a process

BAR = re.compile(rb"\|\s*(\d+)/(\d+) \[")  # tqdm's "| 120/6250 [00:02<01:50, 55.1it/s]"


def tree_memory(root) -> dict:
    """RSS and PSS summed over ``root`` and its descendants, and over the training ranks
    alone: the processes ``mp.spawn`` started (``--procs``), else ``root`` itself."""
    import psutil

    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {"rss": 0, "pss": 0, "processes": 0, "ranks_rss": 0, "ranks_pss": 0}
    measured = []
    for process in processes:
        try:
            memory = process.memory_full_info()  # /proc/PID/smaps_rollup
            spawned = "spawn_main" in " ".join(process.cmdline())
        except psutil.Error:
            continue
        measured.append((spawned, memory.rss, memory.pss))
    ranks = [m for m in measured if m[0]] or measured[:1]
    return {"rss": sum(m[1] for m in measured), "pss": sum(m[2] for m in measured),
            "processes": len(measured), "ranks": len(ranks),
            "ranks_rss": sum(m[1] for m in ranks), "ranks_pss": sum(m[2] for m in ranks)}


def watch(command, cwd, env=None, timeout=TIMEOUT_S) -> dict:
    """Run ``command``, polling its process tree's memory every POLL_S seconds.

    Returns wall_s; stdout as (seconds since start, line) pairs; the progress bar's updates
    as (seconds, n, total); memory samples (tree_memory's, and t, seconds since start); and
    max_rss, the kernel's peak RSS of the largest single process of the tree.
    """
    import psutil

    env = {**os.environ, **PROJECT_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.perf_counter()
    process = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # its own group, to stop it whole
    lines, bar, errors = [], [], []

    def read_stdout():
        for raw in process.stdout:
            lines.append((time.perf_counter() - start, raw.decode(errors="replace")))

    def read_stderr():  # tqdm rewrites its line with \r: split on both
        pending = b""
        while chunk := process.stderr.read1(1 << 16):
            now = time.perf_counter() - start
            *done, pending = re.split(rb"[\r\n]", pending + chunk)
            for piece in done:
                if match := BAR.search(piece):
                    bar.append((now, int(match[1]), int(match[2])))
                elif piece.strip():
                    errors.append(piece.decode(errors="replace"))
                    del errors[:-40]
        if pending.strip():
            errors.append(pending.decode(errors="replace"))

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    root, samples = psutil.Process(process.pid), []
    try:
        while True:
            # wait4, not Popen.wait: its rusage holds the tree's peak RSS.
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            now = time.perf_counter() - start
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if now > timeout:
                raise TimeoutError(f"{' '.join(map(str, command))} ran past {timeout} s")
            samples.append({"t": now, **tree_memory(root)})
            time.sleep(POLL_S)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for reader in readers:
        reader.join(timeout=60)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n"
                           + "\n".join(errors)[-3000:])
    return {"wall_s": now, "lines": lines, "bar": bar, "samples": samples,
            "max_rss": usage.ru_maxrss * 1024}  # KiB on Linux


def peak_memory(watched: dict, until: float | None = None) -> dict:
    """The highest sums over the samples (up to ``until`` seconds), in MB."""
    samples = [s for s in watched["samples"] if until is None or s["t"] <= until]
    if not samples:
        return {}
    return {"peak_rss_mb": max(s["rss"] for s in samples) / MB,
            "peak_pss_mb": max(s["pss"] for s in samples) / MB,
            "processes": max(s["processes"] for s in samples),
            "ranks": max(s["ranks"] for s in samples),
            "peak_ranks_rss_mb": max(s["ranks_rss"] for s in samples) / MB,
            "peak_ranks_pss_mb": max(s["ranks_pss"] for s in samples) / MB}


# ---------------------------------------------------------------- the project's steps

BANNER = re.compile(r"(\d+) process\(es\) x batch (\d+) .*?(\d+) steps per epoch")
TABLE_HEADER = re.compile(r"\btrain_loss\b.*\bvalid_loss\b")
TABLE_ROW = re.compile(r"^\s*\d+\s+([-\d.e+]+)\s+([-\d.e+]+)\s+(\d+):(\d{2}):(\d{2})")


def data_step(package: str, project: Path, csv: Path, data_dir: Path, rows: int) -> dict:
    watched = watch([sys.executable, "-m", f"{package}.data", "--csv", csv,
                     "--data_dir", data_dir], cwd=project)
    csv_mb = csv.stat().st_size / MB
    memory = {key: peak_memory(watched)[key] for key in ("peak_rss_mb", "peak_pss_mb")}
    return {"csv_mb": csv_mb, "seconds": watched["wall_s"], "rows_per_s": rows / watched["wall_s"],
            **memory, "max_rss_mb": watched["max_rss"] / MB,
            "peak_rss_vs_csv": memory["peak_rss_mb"] / csv_mb}


def train_run(project: Path, data_dir: Path, procs: int = 1, flags=()) -> dict:
    """One epoch of ``python main.py --gpus 0 [flags]``, watched."""
    from quality import parse_test_metrics  # bench/ is on sys.path: this script's folder

    extra = [*(["--procs", procs] if procs > 1 else []), *flags]
    watched = watch([sys.executable, "main.py", "--gpus", "0", "--epochs", "1",
                     "--data_dir", data_dir, *extra], cwd=project)
    lines = watched["lines"]
    banner = next(((t, m) for t, line in lines if (m := BANNER.search(line))), None)
    table_at = next((t for t, line in lines if TABLE_HEADER.search(line)), None)
    if banner is None or table_at is None:
        raise RuntimeError("no 'N process(es) x batch B ... S steps per epoch' line or no "
                           "metrics table in main.py's output:\n"
                           + "".join(line for _, line in lines)[-2000:])
    banner_at, match = banner
    world_size, batch, steps = int(match[1]), int(match[2]), int(match[3])
    result = {"procs": world_size, "batch": batch, "steps_per_epoch": steps,
              "epoch_s": table_at - banner_at}
    updates = [(t, n) for t, n, total in watched["bar"] if total == steps and n > 0]
    if len(updates) >= 2 and updates[-1][1] == steps and updates[-1][0] > updates[0][0]:
        (first_t, first_n), (last_t, last_n) = updates[0], updates[-1]
        result["steps_per_s"] = (last_n - first_n) / (last_t - first_t)
        result["train_s"] = last_t - banner_at
    else:
        print("warning: no progress bar in main.py's stderr; steps/s from the epoch's time",
              file=sys.stderr)
        result["steps_per_s"] = steps / result["epoch_s"]
    result["rows_per_s"] = result["steps_per_s"] * batch * world_size
    rows = [m for _, line in lines if (m := TABLE_ROW.match(line))]
    if rows:
        result["train_loss"], result["valid_loss"] = float(rows[-1][1]), float(rows[-1][2])
        result["table_time_s"] = int(rows[-1][3]) * 3600 + int(rows[-1][4]) * 60 + int(rows[-1][5])
    result.update(parse_test_metrics("".join(line for _, line in lines)))
    result["wall_s"] = watched["wall_s"]
    result.update(peak_memory(watched, until=table_at))
    whole = peak_memory(watched)
    result["run_peak_rss_mb"], result["run_peak_pss_mb"] = whole["peak_rss_mb"], whole["peak_pss_mb"]
    result["max_rss_mb"] = watched["max_rss"] / MB
    checkpoints = sorted(data_dir.glob("runs/*/checkpoint_*.pt"))
    if checkpoints:
        result["checkpoint_mb"] = checkpoints[-1].stat().st_size / MB
    return result


# ---------------------------------------------------------------- Surprise

def fit_svd(rows_dir: Path) -> dict:
    """Surprise's SVD at its defaults on the training rows in ``rows_dir`` (user.npy,
    item.npy, rating.npy), in a process of its own: its memory is Surprise's and pandas'."""
    import pandas as pd
    import surprise

    train = pd.DataFrame({key: np.load(Path(rows_dir) / f"{key}.npy")
                          for key in ("user", "item", "rating")})
    start = time.perf_counter()
    reader = surprise.Reader(rating_scale=(float(train["rating"].min()),
                                           float(train["rating"].max())))
    trainset = surprise.Dataset.load_from_df(train, reader).build_full_trainset()
    load_s = time.perf_counter() - start
    algo = surprise.SVD(random_state=0)
    start = time.perf_counter()
    algo.fit(trainset)
    return {"train_rows": len(train), "load_s": load_s, "fit_s": time.perf_counter() - start,
            "epochs": algo.n_epochs, "factors": algo.n_factors}


def svd_run(data_dir: Path) -> dict:
    """fit_svd on the project's training rows, read back from its data/train_tensor_*.pt."""
    import torch

    [path] = sorted(data_dir.glob("train_tensor_*.pt"))[-1:]
    rows_dir = data_dir / "svd-rows"
    rows_dir.mkdir()
    for key, tensor in torch.load(path, weights_only=True).items():
        np.save(rows_dir / f"{key}.npy", tensor.numpy())
    watched = watch([sys.executable, __file__, "svd", rows_dir], cwd=Path(__file__).parent)
    shutil.rmtree(rows_dir)
    result = json.loads(watched["lines"][-1][1])
    result["rows_per_s"] = result["train_rows"] * result["epochs"] / result["fit_s"]
    result["wall_s"] = watched["wall_s"]
    memory = peak_memory(watched)
    return {**result, "peak_rss_mb": memory.get("peak_rss_mb"),
            "max_rss_mb": watched["max_rss"] / MB}


# ---------------------------------------------------------------- the part

def machine() -> dict:
    import platform

    import psutil

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"cpus": os.cpu_count(), "cpu": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": version("torch"),
            "surprise": version("scikit-surprise"), "pyarrow": version("pyarrow")}


def rounded(value):
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def print_tables(scale: dict) -> None:
    def table(title, rows, columns):
        print(f"\n{title}", file=sys.stderr)
        widths = [max(len(name), *(len(cell(row)) for row in rows)) for name, cell in columns]
        print("  ".join(name.rjust(w) for (name, _), w in zip(columns, widths, strict=True)),
              file=sys.stderr)
        for row in rows:
            print("  ".join(cell(row).rjust(w) for (_, cell), w in zip(columns, widths, strict=True)),
                  file=sys.stderr)

    def get(*keys, fmt="{:,.1f}"):
        def cell(row):
            value = row
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return "-" if value is None else fmt.format(value)
        return cell

    runs = [
        ("id space", get("id_space", fmt="{}")), ("users", get("users", fmt="{:,}")),
        ("items", get("items", fmt="{:,}")), ("rows", get("rows", fmt="{:,}")),
        ("procs", get("train", "procs", fmt="{}")), ("steps", get("train", "steps_per_epoch", fmt="{:,}")),
        ("steps/s", get("train", "steps_per_s")), ("epoch s", get("train", "epoch_s")),
        ("RSS MB", get("train", "peak_rss_mb", fmt="{:,.0f}")),
        ("PSS MB", get("train", "peak_pss_mb", fmt="{:,.0f}")),
        ("ranks RSS MB", get("train", "peak_ranks_rss_mb", fmt="{:,.0f}")),
        ("ranks PSS MB", get("train", "peak_ranks_pss_mb", fmt="{:,.0f}")),
        ("run RSS MB", get("train", "run_peak_rss_mb", fmt="{:,.0f}")),
        ("run PSS MB", get("train", "run_peak_pss_mb", fmt="{:,.0f}")),
        ("ckpt MB", get("train", "checkpoint_mb", fmt="{:,.0f}")),
        ("data s", get("data_step", "seconds")),
        ("data RSS MB", get("data_step", "peak_rss_mb", fmt="{:,.0f}")),
        ("RSS/CSV", get("data_step", "peak_rss_vs_csv", fmt="{:.2f}")),
    ]
    settings = scale["settings"]
    table(f"scale: catalogue size at {settings['catalogue_rows']:,} ratings", scale["catalogue"], runs)
    table("scale: rows at MovieLens 25M's id space", scale["rows"], runs)
    table("scale: --procs 2 (batch 256 each) on the largest set, and one process at batch 512",
          [scale["procs2"]["one"], scale["procs2"]["two"]], runs)
    table("scale: Surprise SVD (defaults) on the same training rows", scale["surprise_svd"], [
        ("rows", get("rows", fmt="{:,}")), ("train rows", get("train_rows", fmt="{:,}")),
        ("load s", get("load_s")), ("fit s", get("fit_s")),
        ("peak RSS MB", get("peak_rss_mb", fmt="{:,.0f}")),
        ("project epoch s", get("project_epoch_s")), ("project steps/s", get("project_steps_per_s")),
    ])
    print("\nscale: " + ", ".join(f"{key} {value:.3g}" for key, value in scale["ratios"].items()),
          file=sys.stderr)


def without_svd(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "surprise_svd"}


def scale_bench(work: Path, report: dict, render, quick: bool = False) -> None:
    for module, package in (("surprise", "scikit-surprise"), ("pyarrow", "pyarrow"),
                            ("psutil", "psutil"), ("pandas", "pandas")):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(f"the scale benchmark needs {package}: pip install {package}, "
                             "or pip install -e \".[bench]\"") from None
    size = SIZES["quick" if quick else "full"]
    project = render(work / "scalebench")
    package = "scalebench"
    catalogue = [(name, size["catalogue_rows"]) for name in ID_SPACES]
    by_rows = [("ml-25m", rows) for rows in size["rows"]]
    largest = by_rows[-1]
    done = {}
    for name, rows in dict.fromkeys(catalogue + by_rows):  # in order, each set once
        users, items, max_movie_id = ID_SPACES[name]
        started = time.perf_counter()
        csv = ratings_csv(users, items, max_movie_id, rows)
        entry = {"id_space": name, "users": users, "items": items, "rows": rows,
                 "csv_write_s": time.perf_counter() - started}
        data_dir = project / "data" / f"scale-{users}x{items}-{rows}"
        entry["data_step"] = data_step(package, project, csv, data_dir, rows)
        entry["train"] = train_run(project, data_dir)
        print(f"scale {name} {rows:,} rows: {entry['train']['steps_per_s']:.1f} steps/s, "
              f"peak RSS {entry['train']['peak_rss_mb']:,.0f} MB; data step "
              f"{entry['data_step']['seconds']:.1f} s, {entry['data_step']['peak_rss_mb']:,.0f} MB",
              file=sys.stderr)
        if (name, rows) == largest:
            # Mid-epoch checkpoints every minute (the default is every 10), to see what
            # they cost; and two processes against one with their global batch (512),
            # whose losses they must equal.
            entry["train_checkpoints"] = train_run(project, data_dir, flags=["--save_every", "1m"])
            print(f"scale {name} {rows:,} rows --save_every 1m: "
                  f"{entry['train_checkpoints']['epoch_s']:.0f} s epoch", file=sys.stderr)
            entry["train_bs512"] = train_run(project, data_dir, flags=["--bs", "512"])
            entry["train_procs2"] = train_run(project, data_dir, procs=2)
            print(f"scale {name} {rows:,} rows --procs 2: "
                  f"{entry['train_procs2']['steps_per_s']:.1f} steps/s, peak RSS "
                  f"{entry['train_procs2']['peak_rss_mb']:,.0f} MB, PSS "
                  f"{entry['train_procs2']['peak_pss_mb']:,.0f} MB", file=sys.stderr)
        if name == "ml-25m" and rows in size["svd_rows"]:
            entry["surprise_svd"] = svd_run(data_dir)
            print(f"scale {name} {rows:,} rows: Surprise SVD fit "
                  f"{entry['surprise_svd']['fit_s']:.1f} s", file=sys.stderr)
        done[name, rows] = entry
        shutil.rmtree(data_dir)

    one, two = done[largest]["train_bs512"], done[largest]["train_procs2"]
    scale = {
        "settings": {"mode": "quick" if quick else "full", "epochs": 1,
                     "threads": "OMP_NUM_THREADS=1 per process", "catalogue_rows": size["catalogue_rows"],
                     "batch_and_dim": "the project's defaults (batch as in steps_per_epoch)",
                     "popularity": {"users": USER_POPULARITY, "items": ITEM_POPULARITY,
                                    "law": "p(k) ~ (k + q)^-a, [a, q]; every id at least once"},
                     "memory": "MB = 1e6 bytes; peak_* polled every 0.2 s, summed over the "
                               "process tree (with --procs: the launcher, the ranks and "
                               "multiprocessing's resource tracker), peak_ranks_* over the "
                               "training ranks alone; training: up to the metrics table, run_*: "
                               "the whole run, test and report included; max_rss_mb: the "
                               "largest single process's peak, from the kernel"},
        "machine": machine(),
        "catalogue": [without_svd(done[run]) for run in catalogue],
        "rows": [without_svd(done[run]) for run in by_rows],
        "procs2": {"id_space": largest[0], "rows": largest[1],
                   "one": {**{k: done[largest][k] for k in ("id_space", "users", "items", "rows")},
                           "train": one},
                   "two": {**{k: done[largest][k] for k in ("id_space", "users", "items", "rows")},
                           "train": two}},
        "surprise_svd": [{"id_space": "ml-25m", "rows": rows, **done["ml-25m", rows]["surprise_svd"],
                          "project_epoch_s": done["ml-25m", rows]["train"]["epoch_s"],
                          "project_steps_per_s": done["ml-25m", rows]["train"]["steps_per_s"]}
                         for rows in size["svd_rows"]],
    }
    base = done["ml-100k", size["catalogue_rows"]]["train"]["steps_per_s"]
    scale["ratios"] = {
        "steps_per_s_ml1m_vs_ml100k": done["ml-1m", size["catalogue_rows"]]["train"]["steps_per_s"] / base,
        "steps_per_s_ml25m_vs_ml100k": done["ml-25m", size["catalogue_rows"]]["train"]["steps_per_s"] / base,
        "procs2_rss_vs_one": two["peak_rss_mb"] / one["peak_rss_mb"],
        "procs2_pss_vs_one": two["peak_pss_mb"] / one["peak_pss_mb"],
        "procs2_ranks_rss_vs_one": two["peak_ranks_rss_mb"] / one["peak_ranks_rss_mb"],
        "procs2_ranks_pss_vs_one": two["peak_ranks_pss_mb"] / one["peak_ranks_pss_mb"],
        "procs2_rows_per_s_vs_one": two["rows_per_s"] / one["rows_per_s"],
        "procs2_run_rss_vs_one": two["run_peak_rss_mb"] / one["run_peak_rss_mb"],
        "procs2_run_pss_vs_one": two["run_peak_pss_mb"] / one["run_peak_pss_mb"],
        "largest_data_step_rss_vs_csv": done[largest]["data_step"]["peak_rss_vs_csv"],
        "procs2_valid_loss_minus_one": two["valid_loss"] - one["valid_loss"],
        "checkpoints_every_minute_epoch_vs_default": (
            done[largest]["train_checkpoints"]["epoch_s"] / done[largest]["train"]["epoch_s"]),
    }
    scale["checkpoints"] = {"default": done[largest]["train"],
                            "every_minute": done[largest]["train_checkpoints"]}
    report["scale"] = rounded(scale)
    print_tables(report["scale"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    svd = commands.add_parser("svd", help="fit Surprise's SVD on user/item/rating.npy (JSON)")
    svd.add_argument("rows_dir", type=Path)
    csv = commands.add_parser("csv", help="write (once) and print a synthetic ratings.csv")
    csv.add_argument("--users", type=int, default=ID_SPACES["ml-25m"][0])
    csv.add_argument("--items", type=int, default=ID_SPACES["ml-25m"][1])
    csv.add_argument("--max_movie_id", type=int, default=None,
                     help="movieIds are drawn from 1..this (default: as in the MovieLens release "
                          "of that id space, else 3.54 x items, as in ML-25M)")
    csv.add_argument("--rows", type=int, default=ML25M_ROWS)
    csv.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "svd":
        print(json.dumps(fit_svd(args.rows_dir)))
    else:
        known = {(users, items): top for users, items, top in ID_SPACES.values()}
        max_movie_id = (args.max_movie_id or known.get((args.users, args.items))
                        or round(args.items * 3.54))
        print(ratings_csv(args.users, args.items, max_movie_id, args.rows, args.seed))


if __name__ == "__main__":
    main()
