"""Loss bookkeeping: a smoothed loss for the progress bar, the per-epoch table."""

import time
from datetime import timedelta
from pathlib import Path


class SmoothedLoss:
    """Bias-corrected exponential moving average (fast.ai's SmoothenValue)."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * value
        return self.average / (1 - self.beta ** self.count)


def hms(seconds: float) -> str:
    """3723.9 -> '1:02:03'."""
    return str(timedelta(seconds=round(seconds)))


class EpochTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> str:
        return hms(time.perf_counter() - self.start)


def save_metrics_table(rows: list[dict], path: Path):
    """Print the table of epochs and write it as CSV; returns the DataFrame."""
    import pandas as pd  # imported here: nothing else in training needs pandas

    table = pd.DataFrame(rows).set_index("epoch")
    print(table.to_string(float_format=lambda value: f"{value:.4f}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return table
