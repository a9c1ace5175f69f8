import json

import pytest

from generated_bert.data import load_label_names, load_texts, main
from generated_bert.files import load_data_info

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
    rows = ['"He said ""great"", then left, happy",Thumbs Up'] * 10 + [
        '"Slow, cold, and late",thumbs-down :('
    ] * 10
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    prepare(tmp_path, "--csv", str(csv))
    names = json.loads((tmp_path / f"index_to_name_{DATE}.json").read_text())
    assert names == {"0": "Thumbs Up", "1": "thumbs-down :("}
    texts, labels = load_texts(tmp_path, "train", DATE)
    assert 'He said "great", then left, happy' in texts
    assert sorted(set(labels)) == [0, 1]


REVIEWS = [("café au lait, très bon", "pos"), ("naïve and slow", "neg")] * 10


def all_texts(data_dir):
    return sorted(
        text for name in ("train", "valid", "test") for text in load_texts(data_dir, name, DATE)[0]
    )


@pytest.mark.parametrize(
    ("form", "encoding", "newline"),
    [
        ("plain UTF-8", "utf-8", "\n"),
        ("Excel CSV UTF-8: a byte-order mark", "utf-8-sig", "\n"),
        ("Windows line endings", "utf-8", "\r\n"),
        ("Excel on Windows", "utf-8-sig", "\r\n"),
    ],
)
def test_utf8_with_or_without_bom_and_crlf_reads_the_same(tmp_path, form, encoding, newline):
    csv = tmp_path / "reviews.csv"
    lines = ["text,label", *(f'"{text}",{label}' for text, label in REVIEWS)]
    csv.write_bytes(newline.join([*lines, ""]).encode(encoding))
    prepare(tmp_path, "--csv", str(csv))
    assert load_label_names(tmp_path, DATE) == ["neg", "pos"]
    assert all_texts(tmp_path) == sorted(text for text, _ in REVIEWS)


def test_latin1_is_named_with_its_fix_and_reads_with_encoding(tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_bytes(
        b"text,label\n"
        + "".join(f'"{text}",{label}\n' for text, label in REVIEWS).encode("latin-1")
    )
    with pytest.raises(SystemExit) as exit_info:
        prepare(tmp_path, "--csv", str(csv))
    message = str(exit_info.value)
    assert f"{csv} line 2 (byte 15): 0xe9 is not UTF-8 text" in message
    assert "--encoding latin-1" in message and "\n" not in message

    prepare(tmp_path, "--csv", str(csv), "--encoding", "latin-1")
    assert all_texts(tmp_path) == sorted(text for text, _ in REVIEWS)


def test_rows_with_empty_text_are_skipped_and_counted(tmp_path, capsys):
    csv = tmp_path / "reviews.csv"
    rows = [f'"{text}",{label}' for text, label in REVIEWS] + [",pos", '"  ",neg', ",neg"]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    prepare(tmp_path, "--csv", str(csv))
    assert "skipped 3 rows with empty text" in capsys.readouterr().out
    assert all_texts(tmp_path) == sorted(text for text, _ in REVIEWS)
    assert load_data_info(tmp_path, DATE) == {
        "source": str(csv.resolve()),
        "rows": len(REVIEWS),
        "skipped_rows": 3,
    }


def test_tab_separated_columns_with_other_names_are_renamed_with_names(tmp_path):
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("review\tsentiment\n" + "".join(f"{text}\t{label}\n" for text, label in REVIEWS))
    with pytest.raises(SystemExit, match="has no text or label column .*--names"):
        prepare(tmp_path, "--csv", str(tsv))
    prepare(tmp_path, "--csv", str(tsv), "--names", "text,label")
    assert all_texts(tmp_path) == sorted(text for text, _ in REVIEWS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("text,label\n", "has a header but no rows"),
        ("review,label\nok,pos\n", "has no text column"),
        ("text,label\nfine,pos\nawful,\n", "line 3: empty label"),
        ("text,label\n,pos\n  ,neg\n", "all 2 rows have empty text"),
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
