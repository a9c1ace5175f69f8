"""Hugging Face helpers: tokenizer, model, encodings and saved models, offline-ready.

    python -m generated_bert.hf --tiny-model models/tiny-bert   # a small random BERT and a
                                                     # tokenizer trained on data/
    python main.py --bert_type models/tiny-bert      # train it, no network needed

``--bert_type`` is a hub name (``bert-base-uncased``, ``roberta-base``, ...) or a
local folder. A hub name already in the local cache loads without touching the
network; with no network and no cache, the error says how to use a local folder.
"""

import argparse
import hashlib
import itertools
import sys
from pathlib import Path

import torch

from .args import PROJECT_DIR, UsageError, apply_defaults, date_type, positive_int
from .data import load_label_names, load_texts
from .files import data_file, find_data_date, load_torch, save_torch

DEFAULT_MODEL = "bert-base-uncased"


def add_hf_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    group = parser.add_argument_group("hugging face")
    group.add_argument(
        "-bt",
        "--bert_type",
        default=DEFAULT_MODEL,
        help="hub name or local folder of a BERT-family model to fine-tune; without network, "
        "a folder such as one made by `python -m generated_bert.hf --tiny-model DIR` "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max_length",
        type=positive_int,
        default=128,
        help="longest text in tokens, longer ones are cut (default: %(default)s)",
    )
    return apply_defaults(parser, defaults)


def _transformers():
    import transformers

    # Load reports and progress bars are noise on every start; errors still show.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def _load(loader, bert_type: str, what: str, **kwargs):
    """loader.from_pretrained(bert_type), trying the local cache before the network."""
    local = Path(bert_type).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"--bert_type {bert_type} is a file; pass a folder or a hub name")
        return loader.from_pretrained(str(local), **kwargs)
    if bert_type.startswith(("/", "./", "../", "~")):  # a path, not a hub name
        raise UsageError(
            f"--bert_type {bert_type}: no such model folder; make one with "
            f"`python -m {__package__}.hf --tiny-model {bert_type}` or fix the path"
        )
    try:
        return loader.from_pretrained(bert_type, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not cached: try the hub
    try:
        return loader.from_pretrained(bert_type, **kwargs)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"cannot load the {what} {bert_type!r}: it is not in the local cache and the hub "
            f"is out of reach ({str(error).splitlines()[0][:120]}); point --bert_type at a local "
            f"folder, e.g. one made by `python -m {__package__}.hf --tiny-model models/tiny-bert`"
        ) from None


def get_tokenizer(bert_type: str):
    """The model's tokenizer. One without a pad token (GPT-2's, Llama's) pads with
    its end-of-text token, as Hugging Face's examples do: padding is masked out, so
    which token fills it does not matter."""
    tokenizer = _load(_transformers().AutoTokenizer, bert_type, "tokenizer")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"the tokenizer of {bert_type} has no pad token and no end-of-text token to "
                "pad with; give it one (tokenizer.pad_token = ...) and save it again"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def get_pretrained_model(
    bert_type: str, label_names: list[str], label_shares: torch.Tensor | None = None
):
    """A sequence classifier with one output per label, its head sized to the labels.

    A head that the checkpoint lacks (a pretrained encoder) starts from random
    weights. Given ``label_shares``, its output bias starts at their logs, so the
    fresh head first predicts each label as often as training sees it, where a zero
    bias predicts them all equally. Otherwise the first steps of training go to
    learning those shares: the whole encoder is pushed toward the commonest label.
    Fine-tuning all-MiniLM-L6-v2 for one epoch on 3,000 clothing reviews, 82% of
    them "recommended", a zero bias ended predicting that label for every review on
    2 seeds of 5, and the shares on none (quikgen's BENCHMARKS.md). A head the
    checkpoint has is kept as it is.

    The weights are float32 whatever the checkpoint holds: since transformers 5,
    from_pretrained keeps a checkpoint's dtype, and many on the hub are saved in
    fp16 or bf16. Training needs fp32 master weights; autocast (--precision) runs
    the arithmetic in half precision where it pays.
    """
    model, loading = _load(
        _transformers().AutoModelForSequenceClassification,
        bert_type,
        "model",
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        # A checkpoint fine-tuned on other labels gets a fresh head instead of an error.
        ignore_mismatched_sizes=True,
        output_loading_info=True,
    )
    if label_shares is not None:
        fresh = {*loading["missing_keys"], *(key[0] for key in loading["mismatched_keys"])}
        # The head's output layer has the one fresh bias with a value per label;
        # a head without a bias (GPT-2's, for one) starts as loaded.
        parameters = dict(model.named_parameters())
        output_biases = [
            parameters[name]
            for name in sorted(fresh & parameters.keys())
            if name.endswith("bias") and parameters[name].shape == label_shares.shape
        ]
        if len(output_biases) == 1:
            with torch.no_grad():
                output_biases[0].copy_(label_shares.log())
    if model.config.pad_token_id is None:
        # Decoder classifiers (GPT-2's) find each text's last token by the pad id;
        # get_tokenizer pads such models with the end-of-text token.
        model.config.pad_token_id = model.config.eos_token_id
    return model.float()


def get_bert_info(bert_type: str, label_names: list[str], max_length: int) -> dict:
    """The serving handler's setup_config.json, in the form of the transformer
    handlers in TorchServe's examples (the handler here reads max_length)."""
    return {
        "model_name": bert_type,
        "mode": "sequence_classification",
        "do_lower_case": True,
        "num_labels": str(len(label_names)),
        "save_mode": "pretrained",
        "max_length": str(max_length),
        "captum_explanation": False,
        "embedding_name": "bert",
    }


def get_encodings(
    texts: list[str], tokenizer, max_length: int, chunk: int = 10_000
) -> dict[str, torch.Tensor]:
    """Token ids of every text, truncated to max_length and stored end to end:
    text i is input_ids[offsets[i]:offsets[i + 1]]. No padding: batches pad
    themselves to their own longest text. Tokenized a chunk at a time into int32
    arrays: the tokenizer's Python lists of a whole corpus take tens of times more
    memory than the result."""
    ids, lengths = [], []
    for start in range(0, len(texts), chunk):
        rows = tokenizer(
            texts[start : start + chunk],
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths.append(torch.tensor([len(row) for row in rows], dtype=torch.int64))
        ids.append(torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.int32))
    offsets = torch.zeros(len(texts) + 1, dtype=torch.int64)
    offsets[1:] = torch.cat(lengths).cumsum(0)
    return {"input_ids": torch.cat(ids), "offsets": offsets}


def model_source(bert_type: str) -> str:
    """--bert_type as an absolute path when it is a local folder, else the hub name."""
    local = Path(bert_type).expanduser()
    return str(local.resolve()) if local.exists() else bert_type


def encoded_split_path(
    data_dir: Path, data_date: str, name: str, tokenizer, max_length: int
) -> Path:
    """data/tokenized/<tokenizer>/{name}_tensor_{date}_{content}.pt: one folder per
    tokenizer and max_length, one file per content of the split's texts, so that
    texts prepared again under the same date are tokenized again."""
    source = model_source(tokenizer.name_or_path)
    key = hashlib.sha256(f"{source}|{len(tokenizer)}|{max_length}".encode()).hexdigest()[:10]
    folder = f"{Path(source).name}-{max_length}-{key}"
    texts_file = data_file(data_dir, f"{name}_text", data_date, ".csv")
    # Read in chunks: a million texts are hundreds of MB, which every rank would
    # otherwise hold at once just to hash.
    digest = hashlib.sha256()
    with open(texts_file, "rb") as texts:
        for chunk in iter(lambda: texts.read(1 << 20), b""):
            digest.update(chunk)
    content = digest.hexdigest()[:12]
    return Path(data_dir) / "tokenized" / folder / f"{name}_tensor_{data_date}_{content}.pt"


def load_encoded_split(
    data_dir: Path, data_date: str, name: str, tokenizer, max_length: int, device="cpu"
) -> dict[str, torch.Tensor]:
    """The split tokenized for this tokenizer: from the cache, else made and cached.
    Holds input_ids and offsets (see get_encodings), labels and the pad token id."""
    path = encoded_split_path(data_dir, data_date, name, tokenizer, max_length)
    if not path.is_file():
        texts, labels = load_texts(data_dir, name, data_date)
        save_torch(
            {
                **get_encodings(texts, tokenizer, max_length),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "pad_id": torch.tensor(tokenizer.pad_token_id),
            },
            path,
        )
    return load_torch(path, device)


def save_bert_model(
    bert_type: str, label_names: list[str], state_dict: Path, out_dir: Path
) -> Path:
    """The weights in ``state_dict`` as a save_pretrained folder (config + safetensors),
    loadable with AutoModelForSequenceClassification.from_pretrained(out_dir)."""
    transformers = _transformers()
    config = _load(
        transformers.AutoConfig,
        bert_type,
        "model config",
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(load_torch(state_dict))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def save_tokenizer(tokenizer, out_dir: Path) -> list[Path]:
    """The tokenizer's files, which AutoTokenizer.from_pretrained(out_dir) loads."""
    return [Path(path) for path in tokenizer.save_pretrained(out_dir)]


def build_tiny_model(
    texts: list[str],
    label_names: list[str],
    out_dir: Path,
    vocab_size: int = 2000,
    max_length: int = 128,
) -> Path:
    """A small randomly initialised BERT and a WordPiece tokenizer trained on
    ``texts``: for offline runs, tests and demos, not for accuracy on real text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    transformers = _transformers()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        texts, WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wordpiece.decoder = decoders.WordPiece(prefix="##")
    # The generic fast tokenizer saves tokenizer.json exactly as trained.
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )

    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=max(128, max_length),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.hf", description="Hugging Face helpers for this project."
    )
    parser.add_argument(
        "--tiny-model",
        "--tiny_model",
        dest="tiny_model",
        type=Path,
        metavar="DIR",
        required=True,
        help="write a small random BERT and a tokenizer trained on the "
        "training texts to DIR, for --bert_type DIR",
    )
    parser.add_argument(
        "--vocab_size",
        type=positive_int,
        default=2000,
        help="word pieces in the tokenizer (default: %(default)s)",
    )
    parser.add_argument(
        "--max_length",
        type=positive_int,
        default=128,
        help="longest text in tokens the model accepts (default: %(default)s)",
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=PROJECT_DIR / "data",
        help="folder of the prepared texts (default: the project's data/)",
    )
    parser.add_argument(
        "--data_date",
        type=date_type,
        default=None,
        help="YYYYMMDD of the texts to train the tokenizer on (default: newest)",
    )
    args = parser.parse_args(argv)
    try:
        data_date = find_data_date(
            args.data_dir, args.data_date, f"python -m {__package__}.data --synthetic"
        )
    except UsageError as error:
        sys.exit(f"error: {error}")
    texts, _ = load_texts(args.data_dir, "train", data_date)
    out = build_tiny_model(
        texts,
        load_label_names(args.data_dir, data_date),
        args.tiny_model,
        args.vocab_size,
        args.max_length,
    )
    print(f"wrote a tiny BERT and its tokenizer to {out}; train it with --bert_type {out}")


if __name__ == "__main__":
    main()
