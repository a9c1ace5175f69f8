"""How well the classifier does on the test set: report and confusion matrix.

data/classification_report_{date}.txt   sklearn's classification report
data/confusion_{date}.png               the confusion matrix, counts in the cells
"""

import re
import sys
from pathlib import Path

import torch

from .files import data_file, write_atomically


def save_confusion_matrix(confusion, label_names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    size = max(4, len(label_names) + 1)
    figure, axes = plt.subplots(figsize=(size, size))
    # gist_heat without its white and black ends, so white counts stay readable.
    colours = matplotlib.colors.LinearSegmentedColormap.from_list(
        "heat", plt.get_cmap("gist_heat")(torch.linspace(0.01, 0.9, 100).numpy())
    )
    axes.imshow(confusion, cmap=colours)
    ticks = range(len(label_names))
    axes.set_xticks(ticks, label_names)
    axes.set_yticks(ticks, label_names, rotation=90, va="center")
    for actual in ticks:
        for predicted in ticks:
            axes.text(
                predicted,
                actual,
                int(confusion[actual, predicted]),
                ha="center",
                va="center",
                color="white",
            )
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Actual")
    write_atomically(
        path, lambda tmp: figure.savefig(tmp, format="png", bbox_inches="tight", dpi=150)
    )
    plt.close(figure)
    return path


def classification_summary(predictions, labels, label_names, folder, data_date):
    """Print and save the report and the confusion matrix; return the report as
    flat metrics (accuracy, macro-F1, per-class F1 and recall, weighted averages)
    and the files. Warns when every prediction is one label."""
    from sklearn.metrics import classification_report, confusion_matrix

    classes = list(range(len(label_names)))
    kwargs = {"labels": classes, "target_names": label_names, "zero_division": 0}
    text = classification_report(labels, predictions, digits=4, **kwargs)
    print(text)
    report_file = data_file(folder, "classification_report", data_date, ".txt")
    write_atomically(report_file, lambda tmp: Path(tmp).write_text(text))
    confusion_file = save_confusion_matrix(
        confusion_matrix(labels, predictions, labels=classes),
        label_names,
        data_file(folder, "confusion", data_date, ".png"),
    )

    report = classification_report(labels, predictions, output_dict=True, **kwargs)
    metrics = {
        "test_accuracy": float((predictions == labels).double().mean()),
        "test_macro_f1": report["macro avg"]["f1-score"],
    }
    for name in label_names:
        safe_name = re.sub(r"[^0-9A-Za-z_.-]", "_", name)  # what metric stores accept in a key
        metrics[f"f1_{safe_name}"] = report[name]["f1-score"]
        metrics[f"recall_{safe_name}"] = report[name]["recall"]
    for key in ("precision", "recall", "f1-score"):
        metrics[f"weighted_avg_{key}"] = report["weighted avg"][key]
    recalls = ", ".join(f"{name} {report[name]['recall']:.4f}" for name in label_names)
    print(
        f"test accuracy: {metrics['test_accuracy']:.4f}, macro-F1: "
        f"{metrics['test_macro_f1']:.4f}; recall per label: {recalls}"
    )
    predicted = predictions.unique()
    if len(predicted) == 1 and len(labels.unique()) > 1:
        share = float((labels == predicted).double().mean())
        print(
            f"warning: every test text was predicted {label_names[int(predicted)]!r}, the "
            f"label of {share * 100:.0f}% of them: the model learned only how common it is; try "
            "--balance weights (rarer labels weigh more in the loss) or more --epochs",
            file=sys.stderr,
        )
    return metrics, [report_file, confusion_file]
