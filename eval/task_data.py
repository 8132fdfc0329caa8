"""Items of the offline evaluation tasks, cut from held-out text (pure: texts in, dicts out).

Every function here is deterministic: the same documents, counts and seed give the same
items in the same order, so the JSONL files built from them are byte-identical.

Text units. A *paragraph* is a block between blank lines that is at least
``MIN_PARAGRAPH_CHARS`` long and ends in ``.``, ``!`` or ``?`` (this drops headings,
lists and "See also" stubs). A *sentence* ends in ``.``, ``!`` or ``?`` followed by
whitespace and an upper-case letter (or by the paragraph's end).

The three tasks:

- **Rolling perplexity** (:func:`perplexity_documents`, like lm-eval's ``wikitext``):
  ``num_docs`` segments of running text. Each document's paragraphs are packed in order
  into segments of at most ``max_chars`` characters, split at paragraph boundaries (at
  sentence ends inside a longer paragraph); segments are taken round-robin over
  documents (see Selection), so a split of 20 articles with 20 segments asked gives each
  article's opening segment, except articles with no running text (lists).
- **Last word** (:func:`last_word_items`, like ``lambada_openai``): a passage from one
  paragraph ending just before the last word of one of its sentences; the target is
  ``" " + word``. The word must be alphabetic ASCII (``[A-Za-z]``), at least
  ``MIN_TARGET_CHARS`` (4) letters long, preceded by a space and directly followed by the
  sentence's final ``.``/``!``/``?`` (which is not part of the target). The passage
  starts at the paragraph's start, or — when that is more than ``max_context_chars`` back —
  at the first sentence start within that distance; it must be at least
  ``min_context_chars`` long.
- **Choice** (:func:`choice_items`): the context is the sentences of a paragraph before
  sentence k (k ≥ 1, whole sentences, at most ``max_context_chars``, at least
  ``min_context_chars``); the true continuation is sentence k, ``MIN_CHOICE_CHARS`` to
  ``MAX_CHOICE_CHARS`` characters. The other choices are sentences of the same length
  bounds from *other* documents, drawn among those whose length is within
  ``±LENGTH_TOLERANCE`` of the true one (the closest lengths when fewer qualify), so
  length alone does not give the answer away. The choices are shuffled; ``label`` is
  the true one's index.

Selection. Entries are taken round-robin over documents (the first entry of document 0,
of document 1, …, then the second ones), so every document contributes and no single
long article dominates, and returned in that order. Perplexity segments keep text
order; last-word and choice candidates are first shuffled per document by one
``random.Random(seed)``.
"""

from __future__ import annotations

import bisect
import random
import re

from quantkit.errors import DataError

__all__ = [
    "MIN_PARAGRAPH_CHARS",
    "MIN_TARGET_CHARS",
    "MIN_CHOICE_CHARS",
    "MAX_CHOICE_CHARS",
    "LENGTH_TOLERANCE",
    "paragraphs",
    "sentence_spans",
    "running_text_segments",
    "perplexity_documents",
    "last_word_items",
    "choice_items",
]

MIN_PARAGRAPH_CHARS = 200
MIN_TARGET_CHARS = 4
MIN_CHOICE_CHARS = 40
MAX_CHOICE_CHARS = 250
LENGTH_TOLERANCE = 0.25

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_LAST_WORD = re.compile(rf"(?<= )([A-Za-z]{{{MIN_TARGET_CHARS},}})[.!?]$")


def paragraphs(document: str) -> list[str]:
    """Running-text paragraphs of ``document`` (see the module docstring)."""
    blocks = (block.strip() for block in _PARAGRAPH_BREAK.split(document))
    return [b for b in blocks if len(b) >= MIN_PARAGRAPH_CHARS and b[-1] in ".!?"]


def sentence_spans(paragraph: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of ``paragraph``."""
    spans, start = [], 0
    for gap in _SENTENCE_BREAK.finditer(paragraph):
        spans.append((start, gap.start()))
        start = gap.end()
    spans.append((start, len(paragraph)))
    return spans


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """``paragraph`` as whole sentences packed into pieces of at most ``max_chars`` (a
    sentence longer than that is cut at its last space that fits)."""
    pieces: list[str] = []
    for start, end in sentence_spans(paragraph):
        sentence = paragraph[start:end]
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if pieces and len(pieces[-1]) + 1 + len(sentence) <= max_chars and pieces[-1][-1] in ".!?":
            pieces[-1] = f"{pieces[-1]} {sentence}"
        elif sentence:
            pieces.append(sentence)
    return pieces


def running_text_segments(document: str, max_chars: int) -> list[str]:
    """The running-text paragraphs of ``document`` packed in order into segments of at
    most ``max_chars`` characters, split at paragraph boundaries (at sentence ends inside
    a paragraph longer than ``max_chars``)."""
    segments: list[str] = []
    current = ""
    for paragraph in paragraphs(document):
        first, *rest = [paragraph] if len(paragraph) <= max_chars else _pieces(paragraph, max_chars)
        if current and len(current) + 2 + len(first) <= max_chars:
            current = f"{current}\n\n{first}"
        else:
            segments.append(current)
            current = first
        for piece in rest:  # the pieces of one paragraph never share a segment
            segments.append(current)
            current = piece
    segments.append(current)
    return [segment for segment in segments if segment]


def perplexity_documents(documents: list[str], num_docs: int, max_chars: int) -> list[dict]:
    """``num_docs`` running-text segments ``{"doc_id", "text"}`` taken round-robin over documents."""
    per_document = [running_text_segments(d, max_chars) for d in documents]
    available = sum(len(s) for s in per_document)
    if available < num_docs:
        raise DataError(f"the perplexity task needs {num_docs} segments of at most {max_chars} characters; the held-out split has {available} — lower num_docs")
    return [{"doc_id": doc_id, "text": text} for doc_id, text in _take_round_robin(per_document, num_docs)]


def _sentence_starts_within(spans: list[tuple[int, int]], end: int, max_chars: int) -> int | None:
    """The earliest sentence start s with end - s <= max_chars (None if none qualifies)."""
    starts = [start for start, _ in spans]
    position = bisect.bisect_left(starts, end - max_chars)
    return starts[position] if position < len(starts) and starts[position] < end else None


def _last_word_candidates(document: str, min_context_chars: int, max_context_chars: int) -> list[dict]:
    found = []
    for paragraph in paragraphs(document):
        spans = sentence_spans(paragraph)
        for _, end in spans:
            match = _LAST_WORD.search(paragraph[:end])
            if match is None:
                continue
            context_end = match.start() - 1  # the space before the word goes to the target
            start = _sentence_starts_within(spans, context_end, max_context_chars)
            if start is None:
                continue
            context = paragraph[start:context_end]
            if len(context) >= min_context_chars and not context[-1].isspace():
                found.append({"context": context, "target": match.group(1)})
    return found


def _choice_candidates(document: str, min_context_chars: int, max_context_chars: int) -> list[dict]:
    found = []
    for paragraph in paragraphs(document):
        spans = sentence_spans(paragraph)
        for k in range(1, len(spans)):
            truth = paragraph[spans[k][0] : spans[k][1]]
            if not MIN_CHOICE_CHARS <= len(truth) <= MAX_CHOICE_CHARS:
                continue
            context_end = spans[k - 1][1]
            start = _sentence_starts_within(spans[:k], context_end, max_context_chars)
            if start is None or context_end - start < min_context_chars:
                continue
            found.append({"context": paragraph[start:context_end], "truth": truth})
    return found


def _take_round_robin(per_document: list[list], count: int) -> list[tuple[int, object]]:
    """(document index, entry): every document's first entry, then every second one, …"""
    chosen: list[tuple[int, object]] = []
    depth = 0
    while len(chosen) < count:
        for document, entries in enumerate(per_document):
            if depth < len(entries) and len(chosen) < count:
                chosen.append((document, entries[depth]))
        depth += 1
    return chosen


def _shuffled_round_robin(per_document: list[list[dict]], count: int, rng: random.Random, what: str) -> list[tuple[int, dict]]:
    for candidates in per_document:
        rng.shuffle(candidates)
    available = sum(len(c) for c in per_document)
    if available < count:
        raise DataError(f"the held-out text yields {available} {what} candidates, {count} were asked for — lower the count")
    return _take_round_robin(per_document, count)


def last_word_items(documents: list[str], num_items: int, seed: int, min_context_chars: int = 100, max_context_chars: int = 600) -> list[dict]:
    """``num_items`` last-word items ``{"doc_id", "context", "target"}`` (see the module docstring)."""
    rng = random.Random(seed)
    per_document = [_last_word_candidates(d, min_context_chars, max_context_chars) for d in documents]
    return [{"doc_id": doc_id, **item} for doc_id, item in _shuffled_round_robin(per_document, num_items, rng, "last-word")]


def choice_items(
    documents: list[str], num_items: int, seed: int, num_choices: int = 4, min_context_chars: int = 100, max_context_chars: int = 600
) -> list[dict]:
    """``num_items`` items ``{"doc_id", "context", "choices", "label"}`` (see the module docstring)."""
    if num_choices < 2:
        raise DataError(f"num_choices: got {num_choices}, expected at least 2")
    rng = random.Random(seed)
    per_document = [_choice_candidates(d, min_context_chars, max_context_chars) for d in documents]
    chosen = _shuffled_round_robin(per_document, num_items, rng, "choice")
    # Distractor pool: every sentence within the choice length bounds, in text order.
    pool = [
        (doc_id, text)
        for doc_id, document in enumerate(documents)
        for paragraph in paragraphs(document)
        for text in (paragraph[s:e] for s, e in sentence_spans(paragraph))
    ]
    pool = [(doc_id, text) for doc_id, text in pool if MIN_CHOICE_CHARS <= len(text) <= MAX_CHOICE_CHARS]
    items = []
    for doc_id, candidate in chosen:
        truth = candidate["truth"]
        own = {text for source, text in pool if source == doc_id}
        others = [(len(text), text) for text in dict.fromkeys(text for _, text in pool) if text not in own and text != truth]
        if len(others) < num_choices - 1:
            raise DataError(f"only {len(others)} sentences from other documents can serve as wrong choices; {num_choices - 1} are needed")
        close = [text for length, text in others if abs(length - len(truth)) <= LENGTH_TOLERANCE * len(truth)]
        if len(close) < num_choices - 1:
            close = [text for _, text in sorted(others, key=lambda o: (abs(o[0] - len(truth)), o))[: num_choices - 1]]
        choices = [truth, *rng.sample(close, num_choices - 1)]
        rng.shuffle(choices)
        items.append({"doc_id": doc_id, "context": candidate["context"], "choices": choices, "label": choices.index(truth)})
    return items
