"""The bert kind end to end, offline: a tiny BERT built from the training texts."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import python, quikgen, run

pytestmark = pytest.mark.slow

OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("bert") / "reviews"
    result = quikgen("new", str(dest), "--defaults", "--kind", "bert")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "reviews.data", "--synthetic", "--rows", "1500", env=OFFLINE)
    python(dest, "-m", "reviews.hf", "--tiny-model", "models/tiny-bert", env=OFFLINE)
    return dest


def train(project, *args):
    return python(project, "main.py", "--gpus", "0", "--bert_type", "models/tiny-bert",
                  "--lr", "1e-3", *args, env=OFFLINE)


def test_tiny_bert_reaches_ninety_percent_test_accuracy_in_three_epochs(project):
    result = train(project, "--epochs", "3")
    accuracy = float(re.search(r"^\s*accuracy\s+([0-9.]+)", result.stdout, re.MULTILINE).group(1))
    assert accuracy >= 0.9
    (report,) = (project / "data").glob("runs/*/classification_report_*.txt")
    assert "weighted avg" in report.read_text()
    (confusion,) = (project / "data").glob("runs/*/confusion_*.png")
    assert confusion.read_bytes().startswith(b"\x89PNG")


def test_two_processes_finish(project):
    result = train(project, "--epochs", "1", "--procs", "2")
    assert "2 process(es)" in result.stdout and "weighted avg" in result.stdout


def test_bf16_finishes(project):
    result = train(project, "--epochs", "1", "--precision", "bf16")
    assert "torch.bfloat16" in result.stdout and "weighted avg" in result.stdout


def test_csv_with_any_label_strings_trains(project, tmp_path):
    csv = tmp_path / "reviews.csv"
    rows = [f'"great, really great {i}",Thumbs Up' for i in range(60)]
    rows += [f'"awful, ""truly"" awful {i}",thumbs down' for i in range(60)]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    data_dir = tmp_path / "data"
    python(project, "-m", "reviews.data", "--csv", str(csv), "--data_dir", str(data_dir))
    result = train(project, "--epochs", "2", "--data_dir", str(data_dir))
    assert "Thumbs Up" in result.stdout and "thumbs down" in result.stdout


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def two_rank_command(project, data_dir, launcher, *args):
    common = ["main.py", "--data_dir", str(data_dir), "--gpus", "0", "--bert_type",
              "models/tiny-bert", "--lr", "1e-3", "--epochs", "2", *args]
    if launcher == "procs":
        return [sys.executable, *common, "--procs", "2"]
    return [*TORCHRUN, *common]


def prepared_data(project, dest):
    """A copy of the project's prepared texts and tokens, without what other tests trained."""
    shutil.copytree(project / "data", dest, ignore=shutil.ignore_patterns("runs"))
    return dest


def final_weights(data_dir):
    (path,) = data_dir.glob("runs/*/state_dict_e1_*.pt")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(project, tmp_path_factory):
    """The weights after 2 epochs of an uninterrupted 2-process run."""
    data_dir = prepared_data(project, tmp_path_factory.mktemp("uninterrupted") / "data")
    run(*two_rank_command(project, data_dir, "procs"), cwd=project, env=OFFLINE)
    return final_weights(data_dir)


@pytest.mark.parametrize("launcher", ["procs", "torchrun"])
def test_two_ranks_killed_and_resumed_end_with_the_uninterrupted_weights(
        project, uninterrupted, tmp_path, launcher):
    # Dropout is on: the resumed epoch must draw, on every rank, what it drew before.
    data_dir = prepared_data(project, tmp_path / "data")
    command = two_rank_command(project, data_dir, launcher)
    process = subprocess.Popen(command, cwd=project, env={**os.environ, **OFFLINE},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(data_dir.glob("runs/*/checkpoint_*.pt")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # every rank and the launcher, mid epoch 1
    process.wait()
    (checkpoint,) = data_dir.glob("runs/*/checkpoint_*.pt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0

    run(*command, "--resume", cwd=project, env=OFFLINE)
    resumed = final_weights(data_dir)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0)


def macro_f1(data_dir):
    (report,) = data_dir.glob("runs/*/classification_report_*.txt")
    return float(re.search(r"macro avg\s+\S+\s+\S+\s+([0-9.]+)", report.read_text()).group(1))


def imbalanced_csv(tmp_path, rare: int = 60):
    """600 texts, ``rare`` of them (10% by default) one label and the rest another,
    told apart by one word."""
    rows = [f"the room was great and the food was lovely {i % 7},happy" for i in range(600 - rare)]
    rows += [f"the room was awful and the food was lovely {i % 7},unhappy" for i in range(rare)]
    csv = tmp_path / "imbalanced.csv"
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    return csv


def test_balance_raises_macro_f1_on_imbalanced_labels(project, tmp_path):
    # 5% of one label: in four epochs the plain loss does not learn it as well as
    # both kinds of balance do. (At 10%, batches that hold the labels as the split
    # does, since quikgen 0.4.1, learn it with the plain loss too.)
    csv = imbalanced_csv(tmp_path, rare=30)
    scores = {}
    for balance in ("none", "weights", "oversample"):
        data_dir = tmp_path / balance
        python(project, "-m", "reviews.data", "--csv", str(csv), "--data_dir", str(data_dir),
               env=OFFLINE)
        result = train(project, "--data_dir", str(data_dir), "--epochs", "4", "--balance", balance)
        assert "macro-F1" in result.stdout
        scores[balance] = macro_f1(data_dir)
    assert scores["weights"] > scores["none"] and scores["oversample"] > scores["none"], scores


def test_a_fresh_head_starts_at_the_label_shares(project, tmp_path):
    # A pretrained encoder without a classifier head, as bert-base-uncased is: the
    # tiny BERT's encoder alone. At a learning rate too small to move anything, the
    # test loss is the starting head's: the entropy of the 90/10 shares (0.33) where
    # its bias starts at their logs, that of equal odds (0.69) with --balance
    # weights, whose loss sees the labels as balanced.
    encoder = tmp_path / "encoder"
    python(project, "-c", "from transformers import AutoModel, AutoTokenizer\n"
           f"AutoModel.from_pretrained('models/tiny-bert').save_pretrained({str(encoder)!r})\n"
           f"AutoTokenizer.from_pretrained('models/tiny-bert').save_pretrained({str(encoder)!r})",
           env=OFFLINE)
    data_dir = tmp_path / "data"
    python(project, "-m", "reviews.data", "--csv", str(imbalanced_csv(tmp_path)),
           "--data_dir", str(data_dir), env=OFFLINE)
    test_loss = {}
    for balance in ("none", "weights"):
        result = train(project, "--data_dir", str(data_dir), "--bert_type", str(encoder),
                       "--epochs", "1", "--lr", "1e-12", "--balance", balance)
        test_loss[balance] = float(re.search(r"^test loss: ([0-9.]+)", result.stdout, re.M).group(1))
    assert abs(test_loss["none"] - 0.325) < 0.05 and abs(test_loss["weights"] - 0.693) < 0.05, test_loss


def test_the_given_betas_hold_to_the_last_step(project, tmp_path):
    # OneCycleLR would have cycled beta1; the linear schedule leaves it alone.
    data_dir = prepared_data(project, tmp_path / "data")
    train(project, "--data_dir", str(data_dir), "--epochs", "1", "--betas", "0.5,0.999")
    (checkpoint,) = data_dir.glob("runs/*/checkpoint_*.pt")
    optimizers = torch.load(checkpoint, weights_only=True)["optimizers"]
    groups = [group for optimizer in optimizers for group in optimizer["param_groups"]]
    assert {tuple(group["betas"]) for group in groups} == {(0.5, 0.999)}


def test_a_resume_with_another_max_length_is_one_line(project, tmp_path):
    data_dir = prepared_data(project, tmp_path / "data")
    train(project, "--data_dir", str(data_dir), "--epochs", "1", "--max_length", "64")
    (run,) = (data_dir / "runs").iterdir()
    result = python(project, "main.py", "--gpus", "0", "--bert_type", "models/tiny-bert",
                    "--lr", "1e-3", "--data_dir", str(data_dir), "--epochs", "1",
                    "--max_length", "32", "--resume", env=OFFLINE, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --resume: {run} was trained with --max_length 64 (now 32); resume with its "
        "values, or train without --resume to start a new run"]


def test_a_checkpoint_saved_in_fp16_trains_with_fp32_weights(project, tmp_path):
    # transformers 5 keeps a checkpoint's dtype: half-precision weights would train in
    # half precision, and --precision fp16 with clipping would fail to unscale them.
    half = tmp_path / "half"
    python(project, "-c", "import torch\n"
           "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
           "model = AutoModelForSequenceClassification.from_pretrained('models/tiny-bert')\n"
           f"model.half().save_pretrained({str(half)!r})\n"
           f"AutoTokenizer.from_pretrained('models/tiny-bert').save_pretrained({str(half)!r})\n"
           f"assert AutoModelForSequenceClassification.from_pretrained({str(half)!r}).dtype "
           "== torch.float16", env=OFFLINE)
    data_dir = prepared_data(project, tmp_path / "data")
    result = train(project, "--data_dir", str(data_dir), "--bert_type", str(half), "--epochs", "1",
                   "--precision", "fp16", "--clip_grad", "1.0")
    assert "torch.float16" in result.stdout and "weighted avg" in result.stdout
    weights = torch.load(next(data_dir.glob("runs/*/state_dict_e0_*.pt")), weights_only=True)
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {
        torch.float32}


@pytest.mark.parametrize("eos", ["[SEP]", None], ids=["eos", "no-eos"])
def test_a_tokenizer_without_a_pad_token(project, tmp_path, eos):
    # GPT-2's and Llama's tokenizers have no pad token: pad with the end-of-text
    # token, as Hugging Face's examples do, or say in one line what to set.
    model = tmp_path / "no-pad"
    shutil.copytree(project / "models" / "tiny-bert", model)
    python(project, "-c", "from transformers import AutoTokenizer\n"
           f"tokenizer = AutoTokenizer.from_pretrained({str(model)!r})\n"
           f"tokenizer.pad_token = None\ntokenizer.eos_token = {eos!r}\n"
           f"tokenizer.save_pretrained({str(model)!r})\n"
           f"assert AutoTokenizer.from_pretrained({str(model)!r}).pad_token is None",
           env=OFFLINE)
    data_dir = prepared_data(project, tmp_path / "data")
    result = python(project, "main.py", "--gpus", "0", "--bert_type", str(model), "--epochs", "1",
                    "--data_dir", str(data_dir), env=OFFLINE, check=False)
    if eos:
        assert result.returncode == 0, result.stderr
        assert "weighted avg" in result.stdout
    else:
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: the tokenizer of {model} has no pad token and no end-of-text token to pad "
            "with; give it one (tokenizer.pad_token = ...) and save it again"]


def test_the_texts_are_hashed_without_reading_them_whole(project, tmp_path):
    # Every rank hashes the split's CSV to find its tokens: a million texts are
    # hundreds of MB, which read whole would be held by every rank at once.
    data_dir = prepared_data(project, tmp_path / "data")
    (texts,) = data_dir.glob("train_text_*.csv")
    with open(texts, "a") as file:
        file.writelines(f"a longer text to hash, number {i},0\n" for i in range(600_000))
    assert texts.stat().st_size > 20_000_000
    peak = python(project, "-c", "import tracemalloc\n"
                  "from reviews.hf import encoded_split_path, get_tokenizer\n"
                  "tokenizer = get_tokenizer('models/tiny-bert')\n"
                  "tracemalloc.start()\n"
                  f"encoded_split_path({str(data_dir)!r}, {texts.stem.rsplit('_', 1)[1]!r}, "
                  "'train', tokenizer, 128)\n"
                  "print(tracemalloc.get_traced_memory()[1])", env=OFFLINE).stdout
    assert int(peak) < 5_000_000


def test_compile_trains_and_saves_plain_weights(project, tmp_path):
    data_dir = prepared_data(project, tmp_path / "data")
    result = train(project, "--data_dir", str(data_dir), "--epochs", "1", "--compile")
    assert "weighted avg" in result.stdout
    weights = torch.load(next(data_dir.glob("runs/*/state_dict_e0_*.pt")), weights_only=True)
    checkpoint = torch.load(next(data_dir.glob("runs/*/checkpoint_*.pt")), weights_only=True)
    assert weights.keys() == checkpoint["model"].keys()
    assert not [key for key in weights if "_orig_mod" in key or "module." in key]
