import json

import pytest

from generated_bert.data import load_label_names, load_texts, main

DATE = "20240131"


def prepare(tmp_path, *args):
    main([*args, "--data_dir", str(tmp_path), "--data_date", DATE])


def test_synthetic_writes_stratified_splits_and_the_label_names(tmp_path):
    prepare(tmp_path, "--synthetic", "--rows", "600")
    assert load_label_names(tmp_path, DATE) == ["negative", "neutral", "positive"]
    sizes = {name: len(load_texts(tmp_path, name, DATE)[0]) for name in ("train", "valid", "test")}
    assert sum(sizes.values()) == 600 and sizes["valid"] == pytest.approx(60, abs=3)
    _, valid_labels = load_texts(tmp_path, "valid", DATE)
    assert {valid_labels.count(label) for label in range(3)} <= set(range(17, 24))


def test_csv_with_quotes_commas_and_any_label_strings(tmp_path):
    csv = tmp_path / "reviews.csv"
    rows = ['"He said ""great"", then left, happy",Thumbs Up'] * 10 + \
           ['"Slow, cold, and late",thumbs-down :('] * 10
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    prepare(tmp_path, "--csv", str(csv))
    names = json.loads((tmp_path / f"index_to_name_{DATE}.json").read_text())
    assert names == {"0": "Thumbs Up", "1": "thumbs-down :("}
    texts, labels = load_texts(tmp_path, "train", DATE)
    assert 'He said "great", then left, happy' in texts
    assert sorted(set(labels)) == [0, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("text,label\n", "has a header but no rows"),
        ("review,label\nok,pos\n", "has no text column"),
        ("text,label\nfine,pos\n,neg\n", "line 3: empty text or label"),
        ("text,label\n" + "fine,pos\n" * 10, "only one label"),
        ("text,label\n" + "fine,pos\nawful,neg\n" * 3, "6 rows are too few"),
    ],
)
def test_bad_csv_is_a_one_line_error(tmp_path, content, message):
    csv = tmp_path / "reviews.csv"
    csv.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        prepare(tmp_path, "--csv", str(csv))
    assert message in str(exit_info.value)
    assert not list(tmp_path.glob("*_text_*.csv"))


def test_a_missing_csv_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no such file: .*absent.csv; pass the path"):
        prepare(tmp_path, "--csv", str(tmp_path / "absent.csv"))
