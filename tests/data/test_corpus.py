import json

import pytest
import torch

from quantkit.data.corpus import load_documents, token_sequences
from quantkit.data.enwiki import SPLITS, load_enwiki_split, split_of
from quantkit.errors import DataError


def test_enwiki_splits_are_disjoint_nonempty_and_plain_text():
    titles = {split: {a.title for a in load_enwiki_split(split)} for split in SPLITS}
    assert all(titles.values())
    assert not titles["calibration"] & titles["validation"]
    assert not titles["calibration"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    for article in load_enwiki_split("validation"):
        for markup in ("{{", "}}", "[[", "]]", "<ref", "'''"):
            assert markup not in article.text, (article.title, markup)


def test_split_assignment_is_deterministic_and_order_free():
    titles = [f"article {i}" for i in range(50)]
    assert split_of(titles) == split_of(list(reversed(titles)))
    counts = {s: sum(1 for v in split_of(titles).values() if v == s) for s in SPLITS}
    assert counts == {"calibration": 30, "validation": 10, "test": 10}


def test_local_txt_and_jsonl(tmp_path):
    paragraphs = [f"Paragraph number {i} has some words in it." for i in range(40)]
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(paragraphs))
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": p}) for p in paragraphs))
    for path in (txt, jsonl):
        by_split = {split: load_documents(str(path), split) for split in SPLITS}
        assert sorted(sum(by_split.values(), [])) == sorted(paragraphs)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_documents(str(path), "calibration")


def test_jsonl_without_text_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match='string field "text"'):
        load_documents(str(path), "calibration")


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n  \n")
    with pytest.raises(DataError, match="no non-empty text"):
        load_documents(str(path), "calibration")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_documents(str(tmp_path / "missing.txt"), "calibration")


def test_unknown_split():
    with pytest.raises(DataError, match="split must be one of"):
        load_documents("enwiki", "train")


def test_token_sequences_are_deterministic_windows(tiny_tokenizer, enwiki_calibration_text):
    first = token_sequences(tiny_tokenizer, enwiki_calibration_text, 4, 64)
    assert first.shape == (4, 64) and first.dtype == torch.long
    assert torch.equal(first, token_sequences(tiny_tokenizer, enwiki_calibration_text, 4, 64))
    stream = tiny_tokenizer(enwiki_calibration_text[0], add_special_tokens=False)["input_ids"]
    assert first.flatten()[:64].tolist() == stream[:64]


def test_too_short_data_says_what_is_needed(tiny_tokenizer):
    with pytest.raises(DataError, match=r"sequences × 512 tokens = 4096 are needed; provide more text"):
        token_sequences(tiny_tokenizer, ["A short text."], 8, 512, source="--data tiny.txt")
