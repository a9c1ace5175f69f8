"""Serving with a real Ray Serve (serve_engine=ray): the same client, the same answers as
local predictions, dynamic batching across replicas, and a restart mid-run that loses and
repeats no record."""

import csv
import os

import pandas as pd
import psutil
import pytest
import torch

from .conftest import free_port, python, quikgen
from .test_serving import import_api, local_ratings, scored_across_a_restart

pytestmark = pytest.mark.slow
OFFLINE = {"HF_HUB_OFFLINE": "1"}
# Besides the usual texts: an empty one, non-ASCII ones, and texts a CSV reader could
# take for a missing value.
ODD_TEXTS = ["", "héllo wörld ✓ 日本語", "NA", "null", "Ünïcödé 🙂 review", " "]


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def stop_and_check_nothing_is_left(project, package):
    """Stop the server; none of its processes (Ray's are in its session) may outlive it."""
    server = int((project / "serve" / "ray_serve.pid").read_text())
    python(project, "-m", f"{package}.serve", "stop", check=False)
    left = [proc.info for proc in psutil.process_iter(["pid", "name", "status"])
            if session_of(proc.pid) == server and proc.info["status"] != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes of the Ray Serve session {server} outlived stop: {left}"


@pytest.fixture
def ray_served():
    """Start Ray Serve for a project, and always stop it."""
    started = []

    def start(project, package, *flags):
        port = free_port()
        python(project, "-m", f"{package}.serve", "start", "--port", str(port), *flags,
               env=OFFLINE)
        started.append((project, package))
        return f"http://127.0.0.1:{port}/predictions/{package}"

    yield start
    for project, package in started:
        if (project / "serve" / "ray_serve.pid").exists():
            stop_and_check_nothing_is_left(project, package)


def new_ray_project(path, *data):
    answers = ["--data", "use_serve=true", "--data", "serve_engine=ray"]
    for answer in data:
        answers += ["--data", answer]
    result = quikgen("new", str(path), "--defaults", *answers)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def bert_ray(tmp_path_factory):
    project = new_ray_project(tmp_path_factory.mktemp("ray-serve") / "ray-bert", "kind=bert")
    python(project, "-m", "ray_bert.data", "--synthetic", "--rows", "1200", env=OFFLINE)
    python(project, "-m", "ray_bert.hf", "--tiny-model", "models/tiny", env=OFFLINE)
    python(project, "main.py", "--gpus", "0", "--bert_type", "models/tiny", "--max_length", "64",
           "--lr", "1e-3", "--epochs", "1", env=OFFLINE)
    python(project, "-m", "ray_bert.serve", "build", env=OFFLINE)
    return project


@pytest.fixture(scope="module")
def recommender_ray(tmp_path_factory):
    project = new_ray_project(tmp_path_factory.mktemp("ray-serve") / "ray-recs")
    python(project, "-m", "ray_recs.data", "--synthetic", "--rows", "5000", "--users", "60",
           "--items", "40")
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--embedding_dim", "16")
    python(project, "-m", "ray_recs.serve", "build")
    return project


def test_bert_137_texts_through_ray_serve_come_back_in_order_as_predicted_here(bert_ray,
                                                                              ray_served, tmp_path):
    project = bert_ray
    build = project / "serve" / "build"
    assert not (build / "handler.py").exists()  # the deployment is the project's own handler.py
    url = ray_served(project, "ray_bert", "--replicas", "2", "--max_batch_size", "4")
    (test_csv,) = (project / "data").glob("test_text_*.csv")
    texts = (pd.read_csv(test_csv)["text"].tolist() * 2)[: 137 - len(ODD_TEXTS)] + ODD_TEXTS
    # Quoted: an empty text is "", not a blank line (which a CSV reader skips).
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "texts.csv", index=False,
                                         quoting=csv.QUOTE_ALL)

    python(project, "-m", "ray_bert.api", str(tmp_path / "texts.csv"), "--out",
           str(tmp_path / "scored.csv"), "--url", url, "--batch_size", "10", "--workers", "4")
    scored = pd.read_csv(tmp_path / "scored.csv", keep_default_na=False)
    assert scored["index"].tolist() == list(range(137))
    assert scored["text"].tolist() == texts

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(build).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    logits = []
    for text in texts:  # one at a time: no padding to differ from the server's batches
        encoded = AutoTokenizer.from_pretrained(build)(text, truncation=True, max_length=64,
                                                       return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**encoded).logits[0])
    local = torch.stack(logits)
    assert scored["label"].tolist() == [names[i] for i in local.argmax(-1).tolist()]
    served = torch.tensor(scored[[f"logit_{name}" for name in names]].to_numpy(), dtype=torch.float)
    torch.testing.assert_close(served, local, atol=1e-4, rtol=1e-4)
    probabilities = torch.tensor(scored[[f"prob_{name}" for name in names]].to_numpy(),
                                 dtype=torch.float)
    torch.testing.assert_close(probabilities, local.softmax(-1), atol=1e-4, rtol=1e-4)


def test_recommender_137_pairs_through_ray_serve_come_back_in_order_as_predicted_here(
        recommender_ray, ray_served, tmp_path):
    project = recommender_ray
    url = ray_served(project, "ray_recs")
    pairs = [{"user": str(i % 60), "item": str((i * 7) % 40)} for i in range(132)]
    # An empty id, non-ASCII ids, and ids the model never saw: rated null, with an error.
    pairs += [{"user": "", "item": "1"}, {"user": "ü", "item": "2"}, {"user": "3", "item": "日本"},
              {"user": "999", "item": "1"}, {"user": "", "item": ""}]
    pd.DataFrame(pairs).to_csv(tmp_path / "pairs.csv", index=False)

    python(project, "-m", "ray_recs.api", str(tmp_path / "pairs.csv"), "--out",
           str(tmp_path / "scored.csv"), "--url", url, "--batch_size", "9")
    scored = pd.read_csv(tmp_path / "scored.csv", keep_default_na=False, dtype=str)
    assert scored["index"].tolist() == [str(i) for i in range(137)]
    assert scored[["user", "item"]].to_dict("records") == pairs
    known = pairs[:132]
    local = local_ratings(project, [{"user": int(p["user"]), "item": int(p["item"])} for p in known])
    torch.testing.assert_close(torch.tensor([float(r) for r in scored["rating"][:132]]),
                               local, atol=1e-5, rtol=0)
    assert scored["rating"][132:].tolist() == [""] * 5
    assert scored["error"][132:].tolist() == ["unknown user or item"] * 5


def test_ray_serve_restarted_mid_run_loses_and_repeats_no_record(recommender_ray, ray_served):
    project = recommender_ray
    url = ray_served(project, "ray_recs")
    port = url.split(":")[2].split("/")[0]
    api = import_api(project, "ray_recs")
    pairs = [{"user": i % 60, "item": i % 40} for i in range(3000)]
    scored = scored_across_a_restart(
        api, url, pairs,
        stop=lambda: python(project, "-m", "ray_recs.serve", "stop"),
        start=lambda: python(project, "-m", "ray_recs.serve", "start", "--port", port))
    assert list(scored.index) == list(range(len(pairs)))  # each record once, in order
    assert scored[["user", "item"]].to_dict("records") == pairs
    torch.testing.assert_close(torch.tensor(scored["rating"].tolist()),
                               local_ratings(project, pairs), atol=1e-5, rtol=0)
    stop_and_check_nothing_is_left(project, "ray_recs")


def test_start_refuses_a_second_server_and_stop_says_when_none_runs(recommender_ray, ray_served):
    project = recommender_ray
    ray_served(project, "ray_recs")
    pid = (project / "serve" / "ray_serve.pid").read_text()
    result = python(project, "-m", "ray_recs.serve", "start", "--port", str(free_port()),
                    check=False)
    assert result.returncode == 1
    assert result.stderr == (f"error: Ray Serve already runs from {project / 'serve'} (pid {pid}); "
                             "stop it first\n")
    stop_and_check_nothing_is_left(project, "ray_recs")
    assert python(project, "-m", "ray_recs.serve", "stop").stdout == (
        f"Ray Serve is not running (none was started from {project / 'serve'})\n")


def test_gpus_per_replica_without_a_gpu_is_one_line(recommender_ray):
    # Ray hides the GPUs from a replica that asks for none; one that asks for a GPU
    # on a machine without one would wait forever to be placed.
    result = python(recommender_ray, "-m", "ray_recs.serve", "start", "--port", str(free_port()),
                    "--gpus_per_replica", "1", check=False)
    assert result.returncode == 1
    assert result.stderr == ("error: --gpus_per_replica: no GPU is visible here; drop it to "
                             "serve on the CPU\n")
