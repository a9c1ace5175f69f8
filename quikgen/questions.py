"""The questions a template asks: quikgen's own, or those of another source."""

import yaml
from plumbum import ProcessExecutionError

from .errors import QuikgenError, one_line
from .source import CONFIG, bundled_template

try:
    from copier._template import Template
except ImportError:  # copier < 9.5
    from copier.template import Template

# What quikgen itself reads from the answers: the project's and package's names
# (the next commands it prints) and the kind.
REQUIRED = ("project_name", "package_name", "kind")


def bundled_questions() -> dict[str, dict]:
    """The questions of quikgen's own template, by name."""
    spec = yaml.safe_load((bundled_template() / CONFIG).read_text())
    return {name: question for name, question in spec.items() if not name.startswith("_")}


def source_questions(src: str, ref: str | None) -> dict[str, dict]:
    """The questions of the template at ``src`` (a path or git URL) at ``ref``
    (default: its newest tag, as copier picks), read by copier itself; a
    template that lacks quikgen's questions is refused here, before anything
    is rendered."""
    template = Template(url=src, ref=ref)
    try:
        questions = dict(template.questions_data)
        version = template.commit
    except ProcessExecutionError as error:
        raise QuikgenError(f"cannot read the template source {src}: "
                           f"{one_line(error.stderr or '') or error}") from None
    finally:
        cleanup = getattr(template, "_cleanup", None)
        if cleanup is not None:
            cleanup()
    missing = [name for name in REQUIRED if name not in questions]
    if missing:
        at = f" at {version}" if version else ""
        raise QuikgenError(
            f"the template {src}{at} does not ask {', '.join(missing)}, which quikgen needs; "
            "choose a quikgen template (copier.yml at its root asking project_name, package_name "
            "and kind), another version with --vcs-ref, or render it with plain copier copy")
    return questions


def choices(question: dict) -> dict[str, str]:
    """A question's choices as {value: label}, from copier's label: value mapping or its
    list of values or [label, value] pairs; empty when it offers no choices."""
    offered = question.get("choices") or {}
    if isinstance(offered, dict):
        return {str(value): str(label) for label, value in offered.items()}
    if isinstance(offered, list):
        pairs = [choice if isinstance(choice, list | tuple) else (choice, choice) for choice in offered]
        return {str(value): str(label) for label, value in pairs}
    return {}


def kinds(questions: dict[str, dict]) -> dict[str, str]:
    """Project kinds and their descriptions, from the kind question's choices;
    empty when the question offers no choices."""
    return {value: label.split(": ", 1)[-1] for value, label in choices(questions.get("kind", {})).items()}
