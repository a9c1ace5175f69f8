"""A generated recommender project, used the way its README says."""

import csv
import random

import pytest

from .conftest import git, only_run, python, quikgen

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "my-recommender"
    result = quikgen("new", str(dest), "--defaults")
    assert result.exit_code == 0, result.output
    return dest


def metrics_rows(output: str) -> list[list[str]]:
    """The rows of the printed metrics table: epoch, train_loss, valid_loss, time,
    and a * on the best epoch's row."""
    return [line.split() for line in output.splitlines()
            if line.split() and line.split()[0].isdigit() and len(line.split()) in (4, 5)]


def test_synthetic_data_trains_three_epochs_with_falling_valid_loss(project):
    python(project, "-m", "my_recommender.data", "--synthetic")
    result = python(project, "main.py", "--epochs", "3", "--gpus", "0")

    rows = metrics_rows(result.stdout)
    assert [row[0] for row in rows] == ["0", "1", "2"]
    valid_losses = [float(row[2]) for row in rows]
    assert valid_losses[0] > valid_losses[1] > valid_losses[2]
    # The global mean rating scores an MSE near 1 on this data; the model must beat it clearly.
    assert valid_losses[2] < 0.5
    data = project / "data"
    (date,) = {path.stem.rsplit("_", 1)[1] for path in data.glob("train_tensor_*.pt")}
    for epoch in ("orig", "0", "1", "2"):
        assert (only_run(data) / f"state_dict_e{epoch}_{date}.pt").is_file()
    assert git(project, "status", "--porcelain") == ""


def write_movielens_csv(path, users=300, items=200, rows=20_000, seed=0):
    """userId,movieId,rating,timestamp with sparse ids and a learnable structure."""
    rng = random.Random(seed)
    user_ids = rng.sample(range(1, 10**6), users)
    item_ids = rng.sample(range(1, 10**6), items)
    taste = {u: rng.choice([-1, 1]) for u in user_ids}
    kind = {i: rng.choice([-1, 1]) for i in item_ids}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for _ in range(rows):
            user, item = rng.choice(user_ids), rng.choice(item_ids)
            rating = min(5.0, max(0.5, round((3 + 1.5 * taste[user] * kind[item]) * 2) / 2))
            writer.writerow([user, item, rating, 964982703 + rng.randrange(10**6)])


def test_movielens_csv_with_sparse_ids_trains(project, tmp_path):
    ratings = tmp_path / "ratings.csv"
    write_movielens_csv(ratings)
    prepared = python(project, "-m", "my_recommender.data", "--csv", str(ratings))
    assert "300 users, 200 items" in prepared.stdout
    result = python(project, "main.py", "--epochs", "3", "--gpus", "0")
    valid_losses = [float(row[2]) for row in metrics_rows(result.stdout)]
    assert len(valid_losses) == 3 and valid_losses[-1] < valid_losses[0]


def test_generated_project_passes_its_own_tests_and_ruff(project):
    python(project, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    from .conftest import run

    run("ruff", "check", "--no-cache", ".", cwd=project)
    assert git(project, "status", "--porcelain") == ""
