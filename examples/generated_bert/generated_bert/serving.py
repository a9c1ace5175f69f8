"""What serving the text classifier takes, on both sides of the wire: the files
`serve build` writes for the handler, the settings training recorded that serving
must keep, and how the client (api.py) reads texts and writes predictions."""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .args import FlagValues, UsageError, positive_int
from .data import load_texts
from .files import write_atomically
from .hf import get_bert_info, get_tokenizer, model_source, save_bert_model, save_tokenizer

# The weights; a TorchServe archive holds them as its model file.
WEIGHTS_FILE = "model.safetensors"
# What the handler loads: a save_pretrained folder, its tokenizer, and the labels.
MODEL_FILES = [
    WEIGHTS_FILE,
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "setup_config.json",
    "index_to_name.json",
]
RECORDS_HELP = "CSV with a text column"


def add_trained_settings_flags(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "-bt",
        "--bert_type",
        dest="served_bert_type",
        default=None,
        help="not needed: the model type training recorded is served; a different one is refused",
    )
    build.add_argument(
        "--max_length",
        dest="served_max_length",
        type=positive_int,
        default=None,
        help="not needed: the --max_length training recorded is served; a different one is refused",
    )


@dataclass(frozen=True)
class ServedSettings(FlagValues):
    """The model type and --max_length given to `serve build`, if any. They must agree
    with training's: weights read through another tokenizer give wrong answers, not
    an error."""

    served_bert_type: str | None
    served_max_length: int | None

    def differences(self, run_info: dict) -> list[tuple[str, object, object]]:
        """(flag, value given here, value training recorded) for each that differs."""
        differ = []
        if self.served_bert_type is not None:
            if model_source(self.served_bert_type) != run_info["bert_type"]:
                differ.append(("--bert_type", self.served_bert_type, run_info["bert_type"]))
        if self.served_max_length not in (None, run_info["max_length"]):
            differ.append(("--max_length", self.served_max_length, run_info["max_length"]))
        return differ


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2) + "\n"
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_model_files(
    build_dir: Path, state_dict: Path, run_info: dict, data_dir: Path, data_date: str
) -> None:
    """Write into build_dir the classifier with the weights of ``state_dict``, its
    tokenizer and its labels, as training recorded them in ``run_info``, and a few
    test texts to try it with."""
    label_names = run_info["label_names"]
    save_bert_model(run_info["bert_type"], label_names, state_dict, build_dir)
    save_tokenizer(get_tokenizer(run_info["bert_type"]), build_dir)
    write_json(
        build_dir / "setup_config.json",
        get_bert_info(run_info["bert_type"], label_names, run_info["max_length"]),
    )
    write_json(build_dir / "index_to_name.json", dict(enumerate(label_names)))
    write_json(build_dir / "sample_text.json", load_texts(data_dir, "test", data_date)[0][:3])


def read_records(frame: pd.DataFrame, file: Path) -> list[str]:
    """The texts of the client's CSV, from its text column."""
    if "text" not in frame.columns:
        raise UsageError(f"{file} has no text column; name the column of texts 'text'")
    return frame["text"].astype(str).tolist()


def prediction_row(text: str, prediction: dict) -> dict:
    """The client's output row for one text: the text, the label, and each label's
    probability and logit."""
    probabilities = prediction["probabilities"]
    row = {"text": text, "label": prediction["label"]}
    row.update({f"prob_{name}": probability for name, probability in probabilities.items()})
    logits = zip(probabilities, prediction["logits"], strict=True)
    row.update({f"logit_{name}": logit for name, logit in logits})
    return row
