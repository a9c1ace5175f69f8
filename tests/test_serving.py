"""Serving with a real TorchServe, and the batched client against faults."""

import http.server
import json
import shutil
import socket
import sys
import threading
import time

import pandas as pd
import pytest
import torch

from .conftest import free_port, python, quikgen

pytestmark = pytest.mark.slow
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def free_port_block(size=5):
    """A base port with `size` free ports above it (TorchServe takes five)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + size < 65000 and all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free port block")


def _free(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def served(tmp_path):
    """Start TorchServe for a project, and always stop it."""
    started = []

    def start(project, package):
        port = free_port_block()
        python(project, "-m", f"{package}.serve", "start", "--port", str(port), env=OFFLINE)
        started.append((project, package))
        return f"http://127.0.0.1:{port}/predictions/{package}"

    yield start
    for project, package in started:
        python(project, "-m", f"{package}.serve", "stop", check=False)


def import_api(project, package):
    sys.path.insert(0, str(project))
    try:
        return __import__(f"{package}.api", fromlist=["batch_inference"])
    finally:
        sys.path.remove(str(project))


@pytest.fixture(scope="module")
def bert_archive(tmp_path_factory):
    """A tiny BERT trained for one epoch, and its archive built with no flags: the
    model type, --max_length and labels come from what training recorded."""
    project = tmp_path_factory.mktemp("serving") / "served-bert"
    assert quikgen("new", str(project), "--defaults", "--kind", "bert",
                   "--data", "use_serve=true").exit_code == 0
    python(project, "-m", "served_bert.data", "--synthetic", "--rows", "1200", env=OFFLINE)
    python(project, "-m", "served_bert.hf", "--tiny-model", "models/tiny", env=OFFLINE)
    python(project, "main.py", "--gpus", "0", "--bert_type", "models/tiny", "--max_length", "64",
           "--lr", "1e-3", "--epochs", "1", env=OFFLINE)
    python(project, "-m", "served_bert.serve", "build", env=OFFLINE)
    return project


def test_bert_end_to_end_through_torchserve(bert_archive, served):
    project = bert_archive
    build = project / "serve" / "build"
    assert json.loads((build / "setup_config.json").read_text())["max_length"] == "64"
    url = served(project, "served_bert")

    (test_csv,) = (project / "data").glob("test_text_*.csv")
    texts = (pd.read_csv(test_csv)["text"].tolist() * 2)[:100]
    api = import_api(project, "served_bert")
    scored = api.batch_inference(texts, batch_size=16, url=url, workers=3,
                                 key_file=project / "serve" / "key_file.json")
    assert list(scored.index) == list(range(100))
    assert scored["text"].tolist() == texts

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(build).eval()
    encoded = AutoTokenizer.from_pretrained(build)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        local = model(**encoded).logits.argmax(-1).tolist()
    assert scored["label"].tolist() == [model.config.id2label[i] for i in local]


@pytest.mark.parametrize(("flag", "value", "recorded"), [
    ("--bert_type", "bert-base-uncased", "models/tiny"),  # the default, typed out of habit
    ("--max_length", "128", "64"),
])
def test_build_refuses_a_model_setting_other_than_the_trained_one(bert_archive, flag, value,
                                                                  recorded):
    project = bert_archive
    if flag == "--bert_type":  # training records a local folder by its absolute path
        recorded = (project / recorded).resolve()
    (run_info,) = (project / "data").glob("runs/*/run_info_*.json")
    data_date = run_info.stem.rsplit("_", 1)[1]
    mar = project / "serve" / "model_store" / "served_bert.mar"
    built = mar.stat().st_mtime_ns

    result = python(project, "-m", "served_bert.serve", "build", flag, value, env=OFFLINE,
                    check=False)
    assert result.returncode == 1
    assert result.stderr == (f"error: {flag} {value}: the weights of {data_date} were trained "
                             f"with {flag} {recorded}; drop {flag} to serve them as trained\n")
    assert mar.stat().st_mtime_ns == built  # the archive already built is left alone


@pytest.fixture(scope="module")
def recommender_archive(tmp_path_factory):
    """A trained recommender with its TorchServe archive built with no flags: the
    best epoch, with the --embedding_dim training recorded."""
    project = tmp_path_factory.mktemp("serving") / "served-recs"
    assert quikgen("new", str(project), "--defaults", "--data", "use_serve=true").exit_code == 0
    python(project, "-m", "served_recs.data", "--synthetic", "--rows", "5000", "--users", "60",
           "--items", "40")
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--embedding_dim", "16")
    python(project, "-m", "served_recs.serve", "build")
    return project


def local_ratings(project, pairs) -> torch.Tensor:
    """What the archived model predicts in this process, without the server."""
    exported = torch.export.load(project / "serve" / "build" / "model.pt2").module()
    with torch.no_grad():
        return exported(torch.tensor([p["user"] for p in pairs]),
                        torch.tensor([p["item"] for p in pairs]))


def test_recommender_end_to_end_through_torchserve(recommender_archive, served):
    project = recommender_archive
    url = served(project, "served_recs")

    pairs = [{"user": user, "item": item} for user in range(10) for item in range(10)]
    api = import_api(project, "served_recs")
    scored = api.batch_inference(pairs, batch_size=7, url=url, workers=4,
                                 key_file=project / "serve" / "key_file.json")
    assert list(scored.index) == list(range(100))
    assert scored[["user", "item"]].to_dict("records") == pairs
    torch.testing.assert_close(torch.tensor(scored["rating"].tolist()),
                               local_ratings(project, pairs), atol=1e-5, rtol=0)


def scored_across_a_restart(api, url: str, pairs: list, stop, start, **client_kwargs):
    """batch_inference of ``pairs`` while the server is stopped, then started again."""
    outcome = {}

    def score_all():
        try:
            # Retries back off 0.5, 1, 2, 4, ... s: 10 outlast a restart.
            outcome["scored"] = api.batch_inference(pairs, batch_size=5, url=url, workers=2,
                                                    retries=10, **client_kwargs)
        except Exception as error:  # reported below, in the test's thread
            outcome["error"] = error

    client = threading.Thread(target=score_all)
    client.start()
    time.sleep(1)  # the client is scoring: 600 requests take several seconds
    stop()
    assert client.is_alive(), "the client finished before the server stopped"
    start()
    client.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    return outcome["scored"]


def test_torchserve_restarted_mid_run_loses_and_repeats_no_record(recommender_archive, served):
    project = recommender_archive
    url = served(project, "served_recs")
    port = url.split(":")[2].split("/")[0]
    api = import_api(project, "served_recs")
    pairs = [{"user": i % 60, "item": i % 40} for i in range(3000)]
    # The restarted server has new tokens; the client reads them from key_file.json.
    scored = scored_across_a_restart(
        api, url, pairs,
        stop=lambda: python(project, "-m", "served_recs.serve", "stop"),
        start=lambda: python(project, "-m", "served_recs.serve", "start", "--port", port),
        key_file=project / "serve" / "key_file.json")
    assert list(scored.index) == list(range(len(pairs)))  # each record once, in order
    assert scored[["user", "item"]].to_dict("records") == pairs
    torch.testing.assert_close(torch.tensor(scored["rating"].tolist()),
                               local_ratings(project, pairs), atol=1e-5, rtol=0)


def test_build_without_epoch_archives_the_recorded_best_epoch(recommender_archive, tmp_path):
    project = tmp_path / "served-recs"
    shutil.copytree(recommender_archive, project, ignore=shutil.ignore_patterns("serve"))
    (run_info,) = (project / "data").glob("runs/*/run_info_*.json")
    data_date = run_info.stem.rsplit("_", 1)[1]
    # As if validation had found epoch 0 better than the last one.
    run_info.write_text(json.dumps({**json.loads(run_info.read_text()), "best_epoch": 0}))

    result = python(project, "-m", "served_recs.serve", "build")
    assert result.stdout.endswith(f": epoch 0 of run {run_info.parent.name} on {data_date}\n")
    archived = torch.export.load(project / "serve" / "build" / "model.pt2").module().state_dict()

    def archived_is(epoch):
        trained = torch.load(run_info.parent / f"state_dict_e{epoch}_{data_date}.pt",
                             weights_only=True)
        return all(torch.equal(archived[name], weights) for name, weights in trained.items())

    assert archived_is(0)
    assert not archived_is(1)  # the last epoch


def built_weights(project, package) -> dict:
    """The weights in serve/build/, as the engine will load them."""
    build = project / "serve" / "build"
    if package == "served_recs":
        return torch.export.load(build / "model.pt2").module().state_dict()
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(build).state_dict()


@pytest.mark.parametrize("archive", ["recommender_archive", "bert_archive"])
def test_a_second_run_of_the_day_keeps_the_first_and_each_can_be_served(
        archive, request, tmp_path):
    package = "served_recs" if archive == "recommender_archive" else "served_bert"
    project = tmp_path / "project"
    shutil.copytree(request.getfixturevalue(archive), project, ignore=shutil.ignore_patterns("serve"))
    (first,) = (project / "data" / "runs").iterdir()
    kept = {path.name: path.read_bytes() for path in first.iterdir()}
    flags = {"served_recs": ["--epochs", "2", "--embedding_dim", "16"],
             "served_bert": ["--bert_type", "models/tiny", "--max_length", "64", "--epochs", "1"]}
    python(project, "main.py", "--gpus", "0", *flags[package], "--lr", "0.02", env=OFFLINE)

    (second,) = set((project / "data" / "runs").iterdir()) - {first}
    assert {path.name: path.read_bytes() for path in first.iterdir()} == kept
    assert {path.name for path in second.iterdir()} == set(kept)
    for run, named in [(second, []), (first, ["--run", first.name])]:
        result = python(project, "-m", f"{package}.serve", "build", *named, env=OFFLINE)
        assert f" of run {run.name} on " in result.stdout
        best = json.loads(next(run.glob("run_info_*.json")).read_text())["best_epoch"]
        (trained,) = run.glob(f"state_dict_e{best}_*.pt")
        trained = torch.load(trained, weights_only=True)
        built = built_weights(project, package)
        assert all(torch.equal(built[name], weights) for name, weights in trained.items())


class FlakyServer(http.server.BaseHTTPRequestHandler):
    """Answers 507 to the first two requests, then echoes a rating per record."""

    lock = threading.Lock()
    calls = 0
    scored = []

    def do_POST(self):  # noqa: N802
        records = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            FlakyServer.calls += 1
            fail = FlakyServer.calls <= 2
            if not fail:
                FlakyServer.scored.extend(r["user"] for r in records)
        body = b"{}" if fail else json.dumps(
            [{"user": r["user"], "item": r["item"], "rating": float(r["user"])} for r in records]
        ).encode()
        self.send_response(507 if fail else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_answering_507_twice_loses_and_repeats_nothing(tmp_path):
    project = tmp_path / "flaky"
    assert quikgen("new", str(project), "--defaults", "--data", "use_serve=true").exit_code == 0
    api = import_api(project, "flaky")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        records = [{"user": i, "item": 0} for i in range(30)]
        scored = api.batch_inference(records, batch_size=4, workers=2, retries=5,
                                     url=f"http://127.0.0.1:{server.server_address[1]}/p")
    finally:
        server.shutdown()
    assert scored["rating"].tolist() == [float(i) for i in range(30)]
    assert sorted(FlakyServer.scored) == list(range(30))  # every record scored exactly once


def test_an_output_folder_that_does_not_exist_is_refused_before_scoring(tmp_path):
    project = tmp_path / "nowhere"
    assert quikgen("new", str(project), "--defaults", "--data", "use_serve=true").exit_code == 0
    (tmp_path / "pairs.csv").write_text("user,item\n1,2\n")
    out = tmp_path / "missing" / "out.csv"
    # No server is running: the folder is checked before any request is made.
    result = python(project, "-m", "nowhere.api", str(tmp_path / "pairs.csv"), "--out", str(out),
                    "--url", "http://127.0.0.1:9/predictions/x", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: --out {out}: no folder {out.parent}; create it or "
                                     "pass another --out")


def test_server_down_is_a_clear_error_and_a_non_zero_exit(tmp_path):
    project = tmp_path / "down"
    assert quikgen("new", str(project), "--defaults", "--data", "use_serve=true").exit_code == 0
    (tmp_path / "pairs.csv").write_text("user,item\n1,2\n3,4\n")
    port = free_port()
    result = python(project, "-m", "down.api", str(tmp_path / "pairs.csv"), "--out",
                    str(tmp_path / "out.csv"), "--url", f"http://127.0.0.1:{port}/predictions/x",
                    "--retries", "1", check=False)
    assert result.returncode == 1
    assert "2 of 2 records were not scored (records 0-1): cannot reach" in result.stderr
    assert "Traceback" not in result.stderr
