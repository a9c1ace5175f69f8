"""examples/generated_bert is a committed rendering of the bert kind; it must
match what the template renders today. Refresh it with:

    python -m tests.test_examples
"""

import filecmp
import shutil
import sys
from pathlib import Path

import copier

from .conftest import REPO, TEMPLATE

EXAMPLE = REPO / "examples" / "generated_bert"
ANSWERS = {
    "project_name": "generated-bert",
    "package_name": "generated_bert",
    "kind": "bert",
    "tracker": "mlflow",
    "use_ray_tune": True,
    "use_serve": True,
    "serve_engine": "ray",
    "author": "quikgen",
    "description": "The bert kind as quikgen renders it, committed for reading",
}


def render_example(dest: Path) -> Path:
    copier.run_copy(str(TEMPLATE), dest, data=ANSWERS, defaults=True, quiet=True)
    # The template's path on the machine that rendered it means nothing elsewhere.
    answers = dest / ".copier-answers.yml"
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(line for line in lines if not line.startswith("_src_path:")))
    return dest


def differences(left: Path, right: Path) -> list[str]:
    found = []

    def walk(comparison, prefix=""):
        found.extend(f"only in {comparison.left.name}/{prefix}{name}" for name in comparison.left_only)
        found.extend(f"only in the fresh rendering: {prefix}{name}" for name in comparison.right_only)
        found.extend(f"differs: {prefix}{name}" for name in comparison.diff_files)
        for name, sub in comparison.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(left, right, ignore=["__pycache__", ".pytest_cache", ".ruff_cache"]))
    return found


def test_generated_bert_example_is_in_sync_with_the_template(tmp_path):
    fresh = render_example(tmp_path / "generated_bert")
    assert differences(EXAMPLE, fresh) == [], "refresh it: python -m tests.test_examples"


if __name__ == "__main__":
    shutil.rmtree(EXAMPLE, ignore_errors=True)
    render_example(EXAMPLE)
    print(f"rendered {EXAMPLE}", file=sys.stderr)
