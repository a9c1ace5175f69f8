"""bench/gpu_check.py, the check a GPU machine runs in one go, proven on the CPU."""

import json
import sys

import pytest

from .conftest import REPO, run

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_every_step_in_its_dry_run(tmp_path):
    result = run(sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--json",
                 str(tmp_path / "rows.json"), cwd=tmp_path)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    trained = [row for row in rows if row["check"] == "train 1 epoch"]
    assert {(row["kind"], row["precision"]) for row in trained} == {
        (kind, precision) for kind in ("recs", "bert") for precision in ("fp32", "bf16", "fp16")}
    for row in trained:
        if row["kind"] == "recs" and row["compile"] == "yes":  # sparse tables: refused in one line
            assert row["result"].startswith("exit 1: error: --compile: torch.compile cannot"), row
        else:
            assert row["result"].startswith("ok, "), row
    assert any(row["kind"] == "bert" and row["compile"] == "yes" for row in trained)
    (resumed,) = [row for row in rows if row["check"] == "kill -9, then --resume"]
    assert resumed["result"].endswith("max weight difference 0.0e+00"), resumed
    (speed,) = [row for row in rows if row["check"] == "one epoch against HF Trainer"]
    assert "tokens/s" in speed["result"]
    assert result.stdout.count("\n| ") == len(rows) + 1  # the header and a line a row
