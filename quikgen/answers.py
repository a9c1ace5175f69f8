"""Answers: the ones given with --data, and the ones a project records."""

import re
from pathlib import Path

import yaml

from .errors import QuikgenError
from .questions import choices

ANSWERS_FILE = ".copier-answers.yml"

# What copier reads as a yes or a no; anything else would be silently misread.
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
            "false": False, "no": False, "off": False, "0": False}


# Questions a newer template asks in another form: the question, and the answer to give.
REPLACED = {"use_mlflow": ("tracker", "tracker=mlflow (or none, tensorboard, wandb)")}


def parse_data(pairs: list[str], questions: dict[str, dict] | None) -> dict:
    """--data KEY=VALUE pairs as answers, checked against ``questions`` when the
    template's questions are known: copier ignores an unknown key without a word."""
    data = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise QuikgenError(f"--data {pair!r} is not KEY=VALUE; write it like --data tracker=mlflow")
        if questions is not None:
            if key not in questions and key in REPLACED:
                question, answer = REPLACED[key]
                raise QuikgenError(f"--data {key}: the template now asks this as {question}; "
                                   f"write --data {answer}")
            if key not in questions or questions[key].get("when") is False:
                asked = [name for name, question in questions.items() if question.get("when") is not False]
                raise QuikgenError(f"--data {key}: the template asks no such question; "
                                   f"it asks {', '.join(asked)}")
            if (values := list(choices(questions[key]))) and value not in values:
                raise QuikgenError(f"--data {pair}: {key} is one of {', '.join(values)}")
            if questions[key].get("type") == "bool":
                if value.lower() not in BOOLEANS:
                    raise QuikgenError(f"--data {pair}: answer {key}=true or {key}=false")
                value = BOOLEANS[value.lower()]
        data[key] = value
    return data


def read_answers(project: Path) -> dict:
    """The answers a generated project records, with its template source and version."""
    answers_path = project / ANSWERS_FILE
    if not answers_path.is_file():
        raise QuikgenError(f"{project} is not a quikgen project (no {ANSWERS_FILE}); "
                           "run this inside a folder made by `quikgen new`")
    recorded = yaml.safe_load(answers_path.read_text()) or {}
    if not recorded.get("_src_path") or not recorded.get("_commit"):
        raise QuikgenError(f"{answers_path} records no template source and version; "
                           "it was not made from a versioned template, so it cannot be updated")
    return recorded
