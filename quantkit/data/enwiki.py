"""The built-in ``enwiki`` corpus: real English Wikipedia articles, offline.

Source: the gensim package ships a shortened dump of the first enwiki pages
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
CC BY-SA). Pages are read with the standard library's streaming XML parser; wiki markup
is removed with mwparserfromhell (a maintained MediaWiki parser), never with home-made
regexes. Articles are split by title hash into calibration / validation / test, so the
split is deterministic, does not depend on file order, and no article is in two splits.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quantkit.cache import atomic_directory, cache_dir
from quantkit.errors import DataError

__all__ = ["Article", "SPLITS", "SPLIT_FRACTIONS", "enwiki_dump_path", "iter_articles", "split_of", "enwiki_split_files", "load_enwiki_split"]

SPLITS = ("calibration", "validation", "test")
# Fractions of articles per split (by title hash rank); validation and test are held out.
SPLIT_FRACTIONS = {"calibration": 0.6, "validation": 0.2, "test": 0.2}
_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_MIN_ARTICLE_CHARS = 1000  # stubs and lists below this carry little running text
_FORMAT_VERSION = 2
_DROPPED_TAGS = {"ref", "table", "gallery", "math", "references", "timeline", "imagemap"}
_DROPPED_LINKS = {"file", "image", "category"}
_STYLE_QUOTES = ("'''''", "'''", "''")  # bold-italic, bold, italic


@dataclass(frozen=True)
class Article:
    title: str
    text: str


def enwiki_dump_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in enwiki corpus needs the gensim package (it ships the dump); `pip install gensim`")
    path = Path(list(spec.submodule_search_locations)[0]) / _DUMP
    if not path.is_file():
        raise DataError(f"gensim is installed but its Wikipedia test dump is missing ({path}); reinstall gensim")
    return path


def _strip_markup(wikitext: str) -> str:
    import mwparserfromhell

    # Style markup (italic / bold quotes) is left unparsed: unbalanced italics are common
    # in real articles and make the parser give up on everything after them, refs included.
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    removable = [
        *code.filter_templates(recursive=True),  # infoboxes, citations
        *(t for t in code.filter_tags(recursive=True) if str(t.tag).lower() in _DROPPED_TAGS),
        *(w for w in code.filter_wikilinks(recursive=True) if str(w.title).split(":", 1)[0].strip().lower() in _DROPPED_LINKS),
    ]
    for node in removable:
        try:
            code.remove(node)
        except ValueError:  # already gone with an enclosing node
            pass
    text = code.strip_code(normalize=True, collapse=True)
    for quotes in _STYLE_QUOTES:
        text = text.replace(quotes, "")
    paragraphs = [" ".join(line.split()) for line in text.splitlines()]
    return "\n\n".join(p for p in paragraphs if len(p) > 1)


def iter_articles(dump: Path | None = None) -> Iterator[Article]:
    """Main-namespace, non-redirect articles of the dump with their plain text."""
    dump = dump or enwiki_dump_path()
    with bz2.open(dump, "rb") as stream:
        for _, element in ElementTree.iterparse(stream, events=("end",)):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.tag[: -len("page")]
            ns = element.findtext(f"{namespace}ns")
            title = element.findtext(f"{namespace}title") or ""
            redirect = element.find(f"{namespace}redirect")
            wikitext = element.findtext(f"{namespace}revision/{namespace}text") or ""
            element.clear()
            if ns != "0" or redirect is not None or wikitext.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = _strip_markup(wikitext)
            if len(text) >= _MIN_ARTICLE_CHARS:
                yield Article(title=title, text=text)


def split_of(titles: list[str]) -> dict[str, str]:
    """Assign each title to a split by the rank of its sha256: deterministic, disjoint."""
    ranked = sorted(titles, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    n = len(ranked)
    calibration_end = round(n * SPLIT_FRACTIONS["calibration"])
    validation_end = calibration_end + round(n * SPLIT_FRACTIONS["validation"])
    assignment = {}
    for rank, title in enumerate(ranked):
        assignment[title] = "calibration" if rank < calibration_end else "validation" if rank < validation_end else "test"
    return assignment


def enwiki_split_files() -> dict[str, Path]:
    """JSONL files ({"title", "text"} per line) of the three splits, built once into the cache."""
    folder = cache_dir("data", f"enwiki-v{_FORMAT_VERSION}")
    files = {split: folder / f"{split}.jsonl" for split in SPLITS}
    if all(path.is_file() for path in files.values()):
        return files
    articles = list(iter_articles())
    assignment = split_of([a.title for a in articles])
    with atomic_directory(folder) as staging:
        for split in SPLITS:
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                for article in articles:
                    if assignment[article.title] == split:
                        handle.write(json.dumps({"title": article.title, "text": article.text}, ensure_ascii=False) + "\n")
    return files


def load_enwiki_split(split: str) -> list[Article]:
    if split not in SPLITS:
        raise DataError(f"enwiki has splits {', '.join(SPLITS)}; got {split!r}")
    path = enwiki_split_files()[split]
    with open(path, encoding="utf-8") as handle:
        return [Article(**json.loads(line)) for line in handle if line.strip()]
