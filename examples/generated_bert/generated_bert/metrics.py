"""Loss bookkeeping: a smoothed loss for the progress bar, the per-epoch table and
its curve; and the tracker of a process that tracks nothing."""

import time
from datetime import timedelta
from pathlib import Path

from .files import remove_leftovers, write_atomically


class SmoothedLoss:
    """Bias-corrected exponential moving average (fast.ai's SmoothenValue)."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, value: float) -> None:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * value

    @property
    def value(self) -> float:
        return self.average / (1 - self.beta**self.count)


def hms(seconds: float) -> str:
    """3723.9 -> '1:02:03'."""
    return str(timedelta(seconds=round(seconds)))


class EpochTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> str:
        return hms(time.perf_counter() - self.start)


def best_epoch(rows: list[dict]) -> int | None:
    """The epoch with the lowest valid_loss (the earliest of equals); None before any."""
    if not rows:
        return None
    return min(rows, key=lambda row: row["valid_loss"])["epoch"]


def epochs_since_best(rows: list[dict]) -> int:
    """Epochs finished after the best one: 0 while the last epoch is the best."""
    return rows[-1]["epoch"] - best_epoch(rows) if rows else 0


def epoch_table(rows: list[dict], best: int):
    import pandas as pd  # imported here: nothing else in training needs pandas

    table = pd.DataFrame(rows).set_index("epoch")
    table["best"] = ["*" if epoch == best else "" for epoch in table.index]
    return table


def print_metrics_table(rows: list[dict], best: int) -> None:
    """The table of epochs, the best one marked with a *."""
    print(epoch_table(rows, best).to_string(float_format=lambda value: f"{value:.4f}"))


def save_metrics_table(rows: list[dict], best: int, test_metrics: dict, path: Path) -> Path:
    """The table of epochs as CSV, with the test metrics in the best epoch's row:
    they were measured with its weights."""
    table = epoch_table(rows, best)
    for name, value in test_metrics.items():
        table.loc[best, name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return path


def save_loss_curve(rows: list[dict], best: int, path: Path) -> Path:
    """train_loss and valid_loss per epoch as a 600 x 400 PNG, the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name in ("train_loss", "valid_loss"):
        axes.plot(epochs, [row[name] for row in rows], marker="o", label=name)
    axes.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend()
    figure.tight_layout()
    remove_leftovers(path)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


class NotTracked:
    """What a process that tracks nothing logs to (see tracking.run_logger): every
    rank but 0, and every rank of a job without a tracked run. It drops it all, so
    train() logs the same way whether a run is tracked or not."""

    def log_metric(self, key: str, value: float, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def set_tag(self, key: str, value) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def close(self) -> None:
        pass
