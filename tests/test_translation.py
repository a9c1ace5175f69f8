"""The translation kind end to end, offline: a tiny MarianMT built from the training pairs,
trained, resumed after kill -9, and served by TorchServe and by Ray Serve."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from .conftest import assert_same_weights, only_run, python, quikgen, run, start_until_checkpoint
from .test_ray_serve import ODD_TEXTS, new_ray_project, ray_served  # noqa: F401 (a fixture)
from .test_serving import served  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
OFFLINE = {"HF_HUB_OFFLINE": "1"}
PACKAGE = "translator"


def write_pairs_csv(project, path):
    """The project's synthetic pairs as a user's CSV would hold them, with quotes,
    commas, non-ASCII text and a row whose target is empty."""
    synthetic = project / "synthetic"
    python(project, "-m", f"{PACKAGE}.data", "--synthetic", "--rows", "1500",
           "--data_dir", str(synthetic))
    pairs = []
    for split in synthetic.glob("*_text_*.csv"):
        pairs += pd.read_csv(split, keep_default_na=False).itertuples(index=False)
    pairs += [('the "red" cat, again', "le chat « rouge », encore"), ("the lonely cat", "")]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["source", "target"])
        writer.writerows(pairs)
    shutil.rmtree(synthetic)
    return len(pairs)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A TorchServe-serving translation project, its pairs prepared from a CSV, and a
    tiny MarianMT."""
    project = tmp_path_factory.mktemp("translation") / PACKAGE
    result = quikgen("new", str(project), "--defaults", "--kind", "translation",
                     "--data", "use_serve=true")
    assert result.exit_code == 0, result.output
    rows = write_pairs_csv(project, project / "pairs.csv")
    prepared = python(project, "-m", f"{PACKAGE}.data", "--csv", "pairs.csv", env=OFFLINE)
    assert "skipped 1 rows with an empty source or target" in prepared.stdout
    assert json.loads(next((project / "data").glob("data_info_*.json")).read_text())["rows"] == rows - 1
    python(project, "-m", f"{PACKAGE}.hf", "--tiny-model", "models/tiny", env=OFFLINE)
    return project


@pytest.fixture(scope="module")
def trained(project):
    """What training printed: the run that the serving tests serve."""
    return python(project, "main.py", "--gpus", "0", "--model", "models/tiny", "--lr", "2e-3",
                  "--epochs", "4", env=OFFLINE).stdout


def test_a_csv_of_pairs_trains_offline_and_reports_bleu_and_chrf(project, trained):
    out = trained
    assert "train_loss  valid_loss" in out
    bleu, chrf = map(float, re.search(r"test BLEU ([\d.]+), chrF ([\d.]+)", out).groups())
    assert bleu > 0 and chrf > 20  # the tiny model has learned some of the toy French
    folder = only_run(project / "data")
    assert (folder / next(folder.glob("loss_curve_*.png")).name).read_bytes().startswith(b"\x89PNG")
    header = next(folder.glob("metrics_*.csv")).read_text().splitlines()[0]
    assert "test_bleu" in header and "test_chrf" in header
    assert next(folder.glob("translations_*.csv")).read_text().startswith("source,reference,translation")


@pytest.fixture(scope="module")
def small(project, tmp_path_factory):
    """300 pairs, and the tiny model without dropout: runs that must take the same steps."""
    small = tmp_path_factory.mktemp("small")
    python(project, "-m", f"{PACKAGE}.data", "--synthetic", "--rows", "300",
           "--data_dir", str(small / "data"))
    shutil.copytree(project / "models" / "tiny", small / "tiny")
    config = json.loads((small / "tiny" / "config.json").read_text())
    config.update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    (small / "tiny" / "config.json").write_text(json.dumps(config))
    return small


def train_small(project, small, name, *args, launcher=()):
    data_dir = small / name
    shutil.copytree(small / "data", data_dir)
    command = [*launcher, "main.py", "--data_dir", str(data_dir), "--gpus", "0", "--model",
               str(small / "tiny"), "--lr", "1e-3", "--epochs", "3", "--num_beams", "1", *args]
    run(*command if launcher else (sys.executable, *command), cwd=project, env=OFFLINE)
    return torch.load(next(only_run(data_dir).glob("state_dict_e2_*.pt")), weights_only=True)


def test_two_processes_and_accumulation_take_the_steps_of_one_process(project, small):
    # 240 training pairs: one process takes them in one batch; two processes take
    # 120 each, and accumulation two micro-batches of 120. Their tokens differ in
    # number, so this holds only if a pair weighs the same wherever it lands.
    single = train_small(project, small, "single", "--bs", "240")
    assert_same_weights(train_small(project, small, "procs", "--bs", "120", "--procs", "2"), single)
    assert_same_weights(train_small(project, small, "accumulated", "--bs", "120",
                                    "--accumulate", "2"), single)


def test_killed_and_resumed_ends_with_the_uninterrupted_weights(project, tmp_path):
    # Dropout is on: the resumed steps must draw, on every rank, what they drew before.
    def command(data_dir):
        return [sys.executable, "main.py", "--data_dir", str(data_dir), "--gpus", "0", "--procs",
                "2", "--model", "models/tiny", "--lr", "2e-3", "--epochs", "2", "--num_beams", "1",
                "--save_every", "5"]

    prepared = shutil.ignore_patterns("runs")
    shutil.copytree(project / "data", tmp_path / "uninterrupted", ignore=prepared)
    run(*command(tmp_path / "uninterrupted"), cwd=project, env=OFFLINE)
    data_dir = tmp_path / "killed"
    shutil.copytree(project / "data", data_dir, ignore=prepared)
    process, checkpoint = start_until_checkpoint(
        project, data_dir, "checkpoint_*.pt", command(data_dir), env={**os.environ, **OFFLINE},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(process.pid, signal.SIGKILL)  # every rank and the launcher
    process.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0

    run(*command(data_dir), "--resume", cwd=project, env=OFFLINE)
    final = next(only_run(data_dir).glob("state_dict_e1_*.pt"))
    expected = next(only_run(tmp_path / "uninterrupted").glob("state_dict_e1_*.pt"))
    assert_same_weights(torch.load(final, weights_only=True),
                        torch.load(expected, weights_only=True), atol=1e-6)


def sources_137(project):
    (test_csv,) = (project / "data").glob("test_text_*.csv")
    sources = pd.read_csv(test_csv, keep_default_na=False)["source"].tolist()
    return (sources * 2)[: 137 - len(ODD_TEXTS)] + ODD_TEXTS


def translated_here(build, sources):
    """Each source translated on its own (no padding to differ from the server's
    batches), by the project's hf.translate_with_scores with the build's settings."""
    sys.path.insert(0, str(build.parent.parent))
    try:
        translate = __import__(f"{PACKAGE}.hf", fromlist=["translate_with_scores"]).translate_with_scores
    finally:
        sys.path.pop(0)
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(build).eval()
    tokenizer = AutoTokenizer.from_pretrained(build)
    setup = json.loads((build / "setup_config.json").read_text())
    texts, scores = [], []
    for source in sources:
        (text,), (score,) = translate(model, tokenizer, [source], setup["max_length"],
                                      setup["num_beams"], setup["max_new_tokens"])
        texts.append(text)
        scores.append(score)
    return texts, scores


def assert_served_as_here(project, url, tmp_path, *client_flags):
    sources = sources_137(project)
    # Quoted: an empty source is "", not a blank line (which a CSV reader skips).
    pd.DataFrame({"source": sources}).to_csv(tmp_path / "sources.csv", index=False,
                                             quoting=csv.QUOTE_ALL)
    python(project, "-m", f"{PACKAGE}.api", str(tmp_path / "sources.csv"), "--out",
           str(tmp_path / "translated.csv"), "--url", url, "--batch_size", "10", "--workers", "4",
           *client_flags)
    answers = pd.read_csv(tmp_path / "translated.csv", keep_default_na=False)
    assert answers["index"].tolist() == list(range(137))
    assert answers["source"].tolist() == sources
    texts, scores = translated_here(project / "serve" / "build", sources)
    assert answers["translation"].tolist() == texts
    torch.testing.assert_close(torch.tensor(answers["score"].tolist()), torch.tensor(scores),
                               atol=1e-4, rtol=1e-4)


def test_torchserve_translates_137_sources_in_order_as_here(project, trained, served, tmp_path):  # noqa: F811
    python(project, "-m", f"{PACKAGE}.serve", "build", env=OFFLINE)
    setup = json.loads((project / "serve" / "build" / "setup_config.json").read_text())
    assert setup["num_beams"] == 4 and setup["mode"] == "sequence_to_sequence"
    url = served(project, PACKAGE)
    assert_served_as_here(project, url, tmp_path, "--key_file",
                          str(project / "serve" / "key_file.json"))


def test_ray_serve_translates_137_sources_in_order_as_here(
        project, trained, ray_served, tmp_path):  # noqa: F811
    ray_project = new_ray_project(tmp_path / "ray" / PACKAGE, "kind=translation")
    shutil.copytree(project / "data", ray_project / "data")  # the trained run, as it is
    python(ray_project, "-m", f"{PACKAGE}.serve", "build", env=OFFLINE)
    url = ray_served(ray_project, PACKAGE, "--replicas", "2", "--max_batch_size", "4")
    assert_served_as_here(ray_project, url, tmp_path)
