"""The offline tasks' items on the real held-out enwiki split: deterministic, and every
item obeys the rule its module docstring states."""

import re

import pytest
from quantkit.eval import task_data
from quantkit.eval.task_data import (
    LENGTH_TOLERANCE,
    MAX_CHOICE_CHARS,
    MIN_CHOICE_CHARS,
    choice_items,
    last_word_items,
    paragraphs,
    perplexity_documents,
    running_text_segments,
    sentence_spans,
)

from quantkit.errors import DataError

SEED = 1234


@pytest.fixture(scope="module")
def documents():
    from quantkit.data.corpus import load_documents

    return load_documents("enwiki", "test")


@pytest.fixture(scope="module")
def lastword(documents):
    return last_word_items(documents, 200, SEED)


@pytest.fixture(scope="module")
def choice(documents):
    return choice_items(documents, 200, SEED)


def test_sentences_and_paragraphs():
    text = "Heading\n\n" + "One sentence here. Another one follows! A third? " * 5 + "End.\n\nShort para."
    (paragraph,) = paragraphs(text)  # the heading and the short paragraph are not running text
    spans = sentence_spans(paragraph)
    assert [paragraph[s:e] for s, e in spans[:3]] == ["One sentence here.", "Another one follows!", "A third?"]
    assert paragraph[spans[-1][0] : spans[-1][1]] == "End."
    assert sentence_spans("e.g. lower case does not start a sentence. Yes.") == [(0, 42), (43, 47)]


def test_segments_pack_paragraphs_and_split_long_ones():
    long = " ".join(f"Sentence number {i} is here." for i in range(30))  # ~830 chars: pieces of ~380, ~390, ~60
    short = "A short paragraph that still counts as running text because it is long enough. " * 3
    segments = running_text_segments(f"{short.strip()}\n\n{long}\n\n{short.strip()}", max_chars=400)
    assert all(len(s) <= 400 for s in segments)
    assert segments[0] == short.strip()  # the long paragraph's first piece (~400 chars) does not fit beside it
    assert all("\n\n" not in s for s in segments[1:-1])  # pieces of one paragraph never join with a blank line
    assert segments[-1].endswith("\n\n" + short.strip())  # the last piece takes the next paragraph
    assert "".join(segments).replace("\n\n", " ").replace(" ", "") == f"{short}{long}{short}".replace(" ", "")
    assert all(not s.endswith(" ") and s[-1] in ".!?" for s in segments)


def test_perplexity_documents(documents):
    docs = perplexity_documents(documents, 20, 1500)
    assert len(docs) == 20 and all(100 <= len(d["text"]) <= 1500 for d in docs)
    # Round-robin: first segments of every article with running text, then second ones.
    with_text = [i for i, d in enumerate(documents) if paragraphs(d)]
    assert [d["doc_id"] for d in docs][: len(with_text)] == with_text
    for doc in docs:
        for block in doc["text"].split("\n\n"):
            assert block in documents[doc["doc_id"]]
    with pytest.raises(DataError, match="lower num_docs"):
        perplexity_documents(documents, 10_000, 1500)


def test_last_word_rule(documents, lastword):
    assert len(lastword) == 200
    assert len({d["doc_id"] for d in lastword}) >= 15  # spread over the articles
    for item in lastword:
        assert re.fullmatch(r"[A-Za-z]{4,}", item["target"])
        assert 100 <= len(item["context"]) <= 600 and not item["context"][-1].isspace()
        # The passage and its word are verbatim text, the word closes a sentence.
        assert re.search(re.escape(item["context"] + " " + item["target"]) + r"[.!?](\s|$)", documents[item["doc_id"]])


def test_choice_rule(documents, choice):
    assert len(choice) == 200
    labels = [item["label"] for item in choice]
    assert set(labels) == {0, 1, 2, 3} and max(labels.count(k) for k in range(4)) < 80  # shuffled
    for item in choice:
        truth = item["choices"][item["label"]]
        own = documents[item["doc_id"]]
        assert item["context"] + " " + truth in own
        assert len(set(item["choices"])) == 4
        for other in item["choices"]:
            assert MIN_CHOICE_CHARS <= len(other) <= MAX_CHOICE_CHARS
            if other != truth:
                assert other not in own
                assert any(other in d for d in documents)
    close = sum(all(abs(len(o) - len(i["choices"][i["label"]])) <= LENGTH_TOLERANCE * len(i["choices"][i["label"]]) for o in i["choices"]) for i in choice)
    assert close >= 0.9 * len(choice)


def test_same_inputs_same_items(documents, lastword, choice):
    assert last_word_items(documents, 200, SEED) == lastword
    assert choice_items(documents, 200, SEED) == choice
    assert last_word_items(documents, 200, SEED + 1) != lastword


def test_too_many_items_asked(documents):
    with pytest.raises(DataError, match="lower the count"):
        last_word_items(documents[:1], 100_000, SEED)
    with pytest.raises(DataError, match="num_choices"):
        task_data.choice_items(documents, 2, SEED, num_choices=1)
