"""Training with a tiny BERT built on the spot: no network, seconds on a CPU."""

import os

import pytest
import torch

import main as entry_point
from generated_bert.data import load_label_names
from generated_bert.data import main as prepare_data
from generated_bert.hf import build_tiny_model, get_tokenizer, load_encoded_split, save_bert_model
from generated_bert.report import classification_summary
from generated_bert.runs import latest_run
from generated_bert.task import length_grouped_batches

DATE = "20240131"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    prepare_data(["--synthetic", "--rows", "600", "--data_dir", str(data_dir), "--data_date", DATE])
    from generated_bert.data import load_texts

    model_dir = build_tiny_model(
        load_texts(data_dir, "train", DATE)[0], load_label_names(data_dir, DATE), data_dir / "tiny"
    )
    return data_dir, model_dir


def run(data_dir, model_dir, *args):
    entry_point.main(
        [
            "--data_dir",
            str(data_dir),
            "--gpus",
            "0",
            "--bert_type",
            str(model_dir),
            "--lr",
            "1e-3",
            *args,
        ]
    )


def test_training_learns_and_writes_the_report(setup, capsys):
    data_dir, model_dir = setup
    run(data_dir, model_dir, "--epochs", "2")
    out = capsys.readouterr().out
    assert "accuracy" in out and "weighted avg" in out
    folder = latest_run(data_dir, DATE)
    assert (folder / f"confusion_{DATE}.png").is_file()
    assert (folder / f"classification_report_{DATE}.txt").is_file()
    from matplotlib.image import imread

    curve = imread(folder / f"loss_curve_{DATE}.png")  # a real PNG of the documented size
    assert curve.shape[:2] == (400, 600) and curve.std() > 0
    valid = [
        float(line.split(",")[2])
        for line in (folder / f"metrics_{DATE}.csv").read_text().splitlines()[1:]
    ]
    assert valid[-1] < valid[0]


def test_a_resume_with_another_max_length_is_one_line(setup):
    data_dir, model_dir = setup
    run(data_dir, model_dir, "--epochs", "1", "--max_length", "64")
    with pytest.raises(SystemExit) as exit_info:
        run(data_dir, model_dir, "--epochs", "1", "--max_length", "32", "--resume")
    assert "--max_length 64 (now 32)" in str(exit_info.value)


def test_saved_bert_model_gives_the_trained_logits(setup, tmp_path):
    data_dir, model_dir = setup
    run(data_dir, model_dir, "--epochs", "1")
    labels = load_label_names(data_dir, DATE)
    state_dict = latest_run(data_dir, DATE) / f"state_dict_e0_{DATE}.pt"
    saved = save_bert_model(str(model_dir), labels, state_dict, tmp_path / "saved")

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    trained = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    trained.load_state_dict(torch.load(state_dict, weights_only=True))
    trained.eval()
    encoded = get_tokenizer(str(model_dir))(["the food was great"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**encoded).logits, trained(**encoded).logits)


def test_tokenized_splits_are_cached_per_tokenizer(setup):
    data_dir, model_dir = setup
    tokenizer = get_tokenizer(str(model_dir))
    first = load_encoded_split(data_dir, DATE, "valid", tokenizer, 128)
    assert list((data_dir / "tokenized").glob(f"*/valid_tensor_{DATE}_*.pt"))
    again = load_encoded_split(data_dir, DATE, "valid", tokenizer, 128)
    assert all(torch.equal(first[key], again[key]) for key in first)


def test_texts_prepared_again_under_the_same_date_are_tokenized_again(tmp_path):
    # 300 rows and three labels, then 900 rows and two labels, both dated DATE.
    data_dir = tmp_path / "data"
    prepare_data(["--synthetic", "--rows", "300", "--data_dir", str(data_dir), "--data_date", DATE])
    from generated_bert.data import load_texts

    model_dir = build_tiny_model(
        load_texts(data_dir, "train", DATE)[0], load_label_names(data_dir, DATE), tmp_path / "tiny"
    )
    tokenizer = get_tokenizer(str(model_dir))
    assert len(load_encoded_split(data_dir, DATE, "train", tokenizer, 128)["labels"]) == 240
    csv_file = tmp_path / "two_labels.csv"
    csv_file.write_text("text,label\n" + "".join(f"good {i},yes\nbad {i},no\n" for i in range(450)))
    prepare_data(["--csv", str(csv_file), "--data_dir", str(data_dir), "--data_date", DATE])
    again = load_encoded_split(data_dir, DATE, "train", tokenizer, 128)
    assert len(again["labels"]) == 720 and set(again["labels"].tolist()) == {0, 1}


def test_a_model_that_is_not_there_names_the_way_out(setup):
    data_dir, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        run(data_dir, data_dir / "no-such-model")
    assert "no such model folder" in str(exit_info.value)
    assert "--tiny-model" in str(exit_info.value)


def test_training_batches_mix_the_labels_where_one_label_runs_longer():
    # 3 labels, 256 texts each; label 2's texts are twice as long as the others'.
    # Sorted by length alone, the windows' first batches would hold label 2 only.
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(256)
    lengths = torch.randint(10, 30, (768,), generator=generator) * torch.where(labels == 2, 2, 1)
    encoded = {
        # Every token of a text is its row number, so a batch says which rows it holds.
        "input_ids": torch.arange(768).repeat_interleave(lengths),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
        "labels": labels,
        "pad_id": torch.tensor(-1),
    }
    rows = torch.randperm(768, generator=generator)
    batches = list(length_grouped_batches(encoded, rows, 32, shuffle_seed=0))

    seen = torch.cat([batch["input_ids"][:, 0] for batch in batches])
    assert torch.equal(seen.sort().values, torch.arange(768))  # every row once
    largest_share = max(
        torch.bincount(batch["labels"], minlength=3).max() / len(batch["labels"])
        for batch in batches
    )
    assert largest_share < 0.5
    # Still grouped by length: fewer padded tokens than batches cut in random order.
    padded = sum(batch["attention_mask"].numel() for batch in batches)
    unsorted = sum(len(chunk) * int(lengths[chunk].max()) for chunk in rows.split(32))
    assert padded < 0.85 * unsorted


def test_a_model_that_predicts_one_label_is_told_what_helps(tmp_path, capsys):
    labels = torch.tensor([0] * 8 + [1] * 2)
    predictions = torch.zeros(10, dtype=torch.int64)
    classification_summary(predictions, labels, ["common", "rare"], tmp_path, DATE)
    warning = capsys.readouterr().err
    assert "every test text was predicted 'common', the label of 80% of them" in warning
    assert "--balance weights" in warning
