"""What the training loop needs to know about classifying texts.

train() calls this contract, the same for every kind of project:

    TRAINING_DEFAULTS             defaults of the learning flags for this kind
    TaskSettings                  this kind's own flags (model.py's add_model_args)
    task = Task(settings, data_dir, data_date, world)
    task.train_set / valid_set / test_set, task.num_rows(tensors)
    task.batches(tensors, rows, batch_size, shuffle_seed)
    task.build_model(), task.compute_loss(model, batch, reduction)
    task.training_rows(seed), task.run_info, task.noun
    task.report(model, test_loss, batch_size, autocast, output_dir, data_date)

The texts are prepared by data.py; the model is a Hugging Face classifier (hf.py).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .args import FlagValues
from .batching import to_device
from .data import load_label_names
from .hf import get_pretrained_model, get_tokenizer, load_encoded_split, model_source
from .report import classification_summary
from .world import World, first_on_each_node

# Fine-tuning defaults: BERT's recipe of a linear warmup over the first 10% of the
# steps, then a linear decay; gradients clipped to norm 1 as in HF's Trainer.
# Change them here or on the command line.
TRAINING_DEFAULTS = {"epochs": 3, "bs": 32, "lr": 5e-5, "warmup_ratio": 0.1, "clip_grad": 1.0}


@dataclass(frozen=True)
class TaskSettings(FlagValues):
    bert_type: str
    max_length: int
    balance: str


class Task:
    """Every split tokenized for --bert_type once, cached under data/tokenized/
    (each machine's first process fills the cache, the others read it), and kept
    on the device as token ids end to end (see hf.get_encodings)."""

    noun = "texts"

    def __init__(self, settings: TaskSettings, data_dir: Path, data_date: str, world: World):
        self.settings = settings
        self.label_names = load_label_names(data_dir, data_date)
        tokenizer = get_tokenizer(settings.bert_type)
        with first_on_each_node(world):
            self.train_set, self.valid_set, self.test_set = (
                load_encoded_split(
                    data_dir, data_date, name, tokenizer, settings.max_length, world.device
                )
                for name in ("train", "valid", "test")
            )
        # --balance weights: rarer labels weigh more in the training loss.
        self.class_weights = (
            balanced_class_weights(self.train_set["labels"], len(self.label_names))
            if settings.balance == "weights"
            else None
        )
        # What serving needs to rebuild the model; saved beside the state dicts.
        self.run_info = {
            "bert_type": model_source(settings.bert_type),
            "max_length": settings.max_length,
            "label_names": self.label_names,
        }

    def num_rows(self, tensors: dict) -> int:
        return len(tensors["labels"])

    def batches(
        self, tensors: dict, rows: torch.Tensor, batch_size: int, shuffle_seed: int | None = None
    ):
        return length_grouped_batches(tensors, rows, batch_size, shuffle_seed)

    def training_rows(self, seed: int) -> torch.Tensor:
        """Every training text once, or with --balance oversample the rarer labels'
        texts drawn again (once, seeded) until every label has as many as the commonest."""
        if self.settings.balance == "oversample":
            return oversampled_rows(self.train_set["labels"], seed)
        return torch.arange(self.num_rows(self.train_set))

    def build_model(self) -> nn.Module:
        """The pretrained classifier; a fresh head starts at the label shares that
        the loss sees: the training split's, or equal ones where --balance evens them."""
        labels = self.train_set["labels"].cpu()
        shares = (
            torch.bincount(labels, minlength=len(self.label_names)).clamp(min=1) / len(labels)
            if self.settings.balance == "none"
            else None
        )
        return get_pretrained_model(self.settings.bert_type, self.label_names, shares)

    def compute_loss(self, model: nn.Module, batch: dict, reduction: str = "mean"):
        """Cross-entropy of the predicted classes, in fp32 even under autocast; while
        training with --balance weights, the weighted mean (as weight= in CrossEntropyLoss)."""
        logits = compute_logits(model, batch).float()
        weights = self.class_weights if model.training else None
        return F.cross_entropy(logits, batch["labels"], weight=weights, reduction=reduction)

    def report(
        self,
        model: nn.Module,
        test_loss: float,
        batch_size: int,
        autocast,
        output_dir: Path,
        data_date: str,
    ) -> tuple[dict, list[Path]]:
        """Accuracy, macro-F1 and recall per label, the report and the confusion
        matrix (one process scores the whole test set, so nothing needs gathering)."""
        print(f"test loss: {test_loss:.4f}")
        predictions = predict(model, self.test_set, batch_size, autocast)
        metrics, files = classification_summary(
            predictions, self.test_set["labels"].cpu(), self.label_names, output_dir, data_date
        )
        return {"test_loss": test_loss, **metrics}, files


def compute_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def predict(model: nn.Module, encoded: dict, batch_size: int, autocast) -> torch.Tensor:
    """The predicted class of every text, in the order of ``encoded``."""
    model.eval()
    rows = torch.arange(len(encoded["labels"]))
    predictions = torch.empty(len(rows), dtype=torch.int64, device=encoded["labels"].device)
    for batch in length_grouped_batches(encoded, rows, batch_size):
        with autocast():
            logits = compute_logits(model, batch)
        # Batches come sorted by length: each prediction goes back to its text's row.
        predictions[batch["rows"]] = logits.argmax(dim=-1)
    return predictions.cpu()


def balanced_class_weights(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """rows / (labels x rows of that label), as sklearn's class_weight="balanced":
    every label then weighs as much in the loss as if the labels were balanced."""
    counts = torch.bincount(labels, minlength=num_labels).float()
    return len(labels) / (num_labels * counts.clamp(min=1))


def oversampled_rows(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Row indices where every label's rows are drawn again, at random, until it has
    as many as the commonest label (imbalanced-learn's RandomOverSampler)."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    counts = torch.bincount(labels)
    rows = []
    for label in counts.nonzero().flatten().tolist():
        own = (labels == label).nonzero().flatten()
        extra = own[torch.randint(len(own), (int(counts.max()) - len(own),), generator=generator)]
        rows += [own, extra]
    return torch.cat(rows)


def pad_batch(
    encoded: dict[str, torch.Tensor], rows: torch.Tensor, width: int
) -> dict[str, torch.Tensor]:
    """Texts ``rows`` as input_ids and attention_mask padded to ``width`` tokens (their
    longest), labels, and the rows themselves."""
    starts, ends = encoded["offsets"][rows], encoded["offsets"][rows + 1]
    positions = starts[:, None] + torch.arange(width, device=starts.device)[None, :]
    attention_mask = positions < ends[:, None]
    last = len(encoded["input_ids"]) - 1
    input_ids = encoded["input_ids"][positions.clamp(max=last)]
    return {
        "input_ids": torch.where(attention_mask, input_ids, encoded["pad_id"]),
        "attention_mask": attention_mask.long(),
        "labels": encoded["labels"][rows],
        "rows": rows,
    }


def length_grouped_batches(
    encoded: dict[str, torch.Tensor],
    indices: torch.Tensor,
    batch_size: int,
    shuffle_seed: int | None = None,
    window_batches: int = 32,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``indices``, each padded to its own longest text.

    Training (``shuffle_seed`` given): the shuffled ``indices`` are cut into windows
    of ``window_batches`` batches; each window is sorted by how long each text is for
    its label (length_rank_in_label), cut into batches, and the batch order is
    shuffled. Evaluation: all sorted by length, least padding.

    Sorted by length alone, a label whose texts run longer (more words, or rarer
    words that tokenize into more pieces) fills batches of its own: on 600 short
    texts in 3 balanced labels, one of which tokenizes longer, 14% of the batches
    were over 80% one label, against none of the random ones, and one epoch never
    learned that label. Ranked within their labels, the longest texts of every label
    share the first batches of a window and the shortest the last, so a batch holds
    the labels about as a random batch does, and is still padded to similar lengths:
    88-95% of the padded tokens are text on 3,000 clothing reviews, against 59% for
    random batches (quikgen's BENCHMARKS.md). Windows of 32 batches pad less than
    narrower ones (85-90% with 8). Cutting the windows at random offsets changes
    nothing: the rows are shuffled anew every epoch.
    """
    # Batches are planned on the CPU: reading a length off the GPU would make the
    # CPU wait for it before every batch.
    indices = indices.cpu()
    lengths = (encoded["offsets"][1:] - encoded["offsets"][:-1]).cpu()
    if shuffle_seed is None:
        ordered = indices[torch.argsort(lengths[indices], descending=True, stable=True)]
        groups = list(ordered.split(batch_size))
    else:
        rank = length_rank_in_label(lengths[indices], encoded["labels"].cpu()[indices])
        window = max(batch_size * window_batches, 1)
        groups = []
        for start in range(0, len(indices), window):
            in_window = slice(start, start + window)
            ordered = indices[in_window][torch.argsort(rank[in_window], stable=True)]
            groups.extend(ordered.split(batch_size))
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(shuffle_seed))
        groups = [groups[i] for i in order]
    if not groups:
        return
    widths = [int(lengths[rows].max()) for rows in groups]
    # The epoch's rows go to the device in one copy, cut into batches there.
    planned = to_device(torch.cat(groups), encoded["labels"].device)
    for rows, width in zip(planned.split([len(rows) for rows in groups]), widths, strict=True):
        yield pad_batch(encoded, rows, width)


def length_rank_in_label(lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each text's place among the texts of its own label, from the longest (near 0)
    to the shortest (near 1): the middle of its share of that label's texts.

    Ranked over all the texts given (an epoch's), a label with few texts still gets
    fine-grained places, so its texts land among texts of their own length, where
    a rank within each window would spread a handful of them evenly, padding
    batches of short texts to their length.
    """
    by_length = torch.argsort(lengths, descending=True, stable=True)
    by_label = by_length[torch.argsort(labels[by_length], stable=True)]
    counts = torch.bincount(labels)
    first_of_label = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[by_label]
    place_in_label = torch.arange(len(labels)) - first_of_label[sorted_labels]
    rank = torch.empty(len(labels), dtype=torch.float64)
    rank[by_label] = (place_in_label + 0.5).double() / counts[sorted_labels]
    return rank
