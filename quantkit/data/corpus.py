"""Calibration / evaluation text from ``--data`` and its cut into token sequences.

``--data`` takes the built-in ``enwiki`` corpus, a local ``.txt`` (documents separated
by blank lines) or ``.jsonl`` (one ``{"text": ...}`` object a line) file, or any
``datasets`` dataset name or path (``name`` or ``name:config``). Every source is split
into disjoint calibration / validation / test documents: enwiki and local files by a
hash of each document, a ``datasets`` dataset by its own train / validation / test splits
where it has them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from quantkit.data.enwiki import SPLITS, load_enwiki_split, split_of
from quantkit.errors import DataError

__all__ = ["BUILTIN_DATA", "load_documents", "token_sequences"]

BUILTIN_DATA = ("enwiki",)
_DATASETS_SPLIT_NAMES = {"calibration": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


def load_documents(data: str, split: str) -> list[str]:
    """Texts of ``split`` (calibration | validation | test) of the ``--data`` source."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data == "enwiki":
        documents = [article.text for article in load_enwiki_split(split)]
    else:
        path = Path(data).expanduser()
        if path.suffix.lower() in {".txt", ".jsonl"}:
            documents = _hash_split(_read_local_file(path), split)
        else:
            documents = _load_datasets_split(data, split)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"--data {data!r} has no non-empty text in its {split} split; provide more documents")
    return documents


def token_sequences(tokenizer, documents: list[str], num_sequences: int, seq_len: int, source: str = "data") -> torch.Tensor:
    """``num_sequences`` consecutive windows of ``seq_len`` tokens ([N, L] int64).

    Documents are tokenized in order and joined with the EOS token, then cut into
    non-overlapping windows: deterministic, and no window repeats text.
    """
    if num_sequences < 1 or seq_len < 2:
        raise DataError(f"need at least 1 sequence of at least 2 tokens, got {num_sequences} × {seq_len}")
    needed = num_sequences * seq_len
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in documents:
        stream.extend(tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])
        stream.extend(separator)
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise DataError(
            f"{source} has {len(stream)} tokens, but {num_sequences} sequences × {seq_len} tokens = {needed} are needed; "
            "provide more text or lower --num-sequences / --seq-len"
        )
    return torch.tensor(stream[:needed], dtype=torch.long).reshape(num_sequences, seq_len)


def _hash_split(documents: list[str], split: str) -> list[str]:
    assignment = split_of(documents)
    return [d for d in documents if assignment[d] == split]


def _read_local_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error}); convert the file to UTF-8") from None
    if path.suffix.lower() == ".txt":
        return [p.strip() for p in re.split(r"\n\s*\n", content) if p.strip()]
    documents = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f'{path}, line {number}: not valid JSON ({error.msg}); each line must be an object like {{"text": "..."}}') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}, line {number}: expected an object with a string field "text"')
        documents.append(record["text"])
    return list(dict.fromkeys(documents))  # identical documents once: they would land in one split anyway


def _load_datasets_split(data: str, split: str) -> list[str]:
    import datasets

    name, config = (data, "") if Path(data).exists() else data.partition(":")[::2]
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as error:  # datasets raises many types; say which source failed and why
        raise DataError(f"--data {data!r}: datasets could not load it ({type(error).__name__}: {error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        native = next((loaded[s] for s in _DATASETS_SPLIT_NAMES[split] if s in loaded), None)
        if native is not None:
            return _text_column(native, data)
        if len(loaded) != 1:
            raise DataError(f"--data {data!r} has splits {list(loaded)}; none matches {split}")
        loaded = next(iter(loaded.values()))
    return _hash_split(list(dict.fromkeys(_text_column(loaded, data))), split)


def _text_column(dataset, data: str) -> list[str]:
    if "text" in dataset.column_names:
        return list(dataset["text"])
    string_columns = [c for c, f in dataset.features.items() if getattr(f, "dtype", None) == "string"]
    if not string_columns:
        raise DataError(f"--data {data!r} has no text column (columns: {dataset.column_names})")
    return list(dataset[string_columns[0]])
