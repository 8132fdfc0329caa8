"""HTML building blocks of the report page: every piece of text goes through ``escape``,
the page carries its own CSS, and images are relative paths beside ``index.html`` — one
folder that opens offline in any browser."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Section", "escape", "table", "figure", "hint", "note", "facts", "render_page"]


@dataclass(frozen=True)
class Section:
    """One titled part of the page; ``body`` is HTML built with the helpers below."""

    anchor: str  # the id linked from the contents list
    title: str
    body: str


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric_columns: Iterable[int] = (), highlight_rows: Iterable[int] = ()) -> str:
    """A table of plain-text cells (escaped here); numeric columns are right-aligned."""
    numeric, highlighted = set(numeric_columns), set(highlight_rows)

    def cell(tag: str, column: int, value: object) -> str:
        align = ' class="num"' if column in numeric else ""
        return f"<{tag}{align}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, name) for i, name in enumerate(header))
    body = "".join(
        ('<tr class="highlight">' if r in highlighted else "<tr>") + "".join(cell("td", i, value) for i, value in enumerate(row)) + "</tr>"
        for r, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(src: str, alt: str, caption: str = "") -> str:
    """An image beside index.html (``src`` is a file name, never an absolute path)."""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{escape(src)}" alt="{escape(alt)}">{caption_html}</figure>'


def hint(text: str, command: str | None = None) -> str:
    """What is missing and the command that produces it."""
    command_html = f"<pre><code>{escape(command)}</code></pre>" if command else ""
    return f'<div class="hint"><p>{escape(text)}</p>{command_html}</div>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def facts(items: Iterable[tuple[str, object]]) -> str:
    """A two-column list of labelled values."""
    rows = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in items)
    return f'<dl class="facts">{rows}</dl>'


_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #1d2330;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #1d2330; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header p { margin: 0; color: #c5cad6; }
nav { background: #fff; border-bottom: 1px solid #dde1e8; padding: 8px 32px; position: sticky; top: 0;
      display: flex; flex-wrap: wrap; gap: 4px 20px; }
nav a { color: #1f5fbf; text-decoration: none; white-space: nowrap; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; margin: 20px 0; padding: 4px 24px 18px; }
h2 { font-size: 19px; font-weight: 600; margin: 18px 0 10px; }
figure { margin: 12px 0; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #eceef2; }
figcaption { color: #566074; font-size: 13px; margin-top: 6px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 5px 12px; text-align: left; }
th { background: #f0f2f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #eaf2ff; font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 4px 18px; margin: 10px 0; }
dl.facts dt { color: #566074; }
dl.facts dd { margin: 0; }
.hint { background: #fff8e6; border-left: 4px solid #e0a800; padding: 6px 14px; margin: 10px 0; }
.hint p { margin: 6px 0; }
pre { background: #1d2330; color: #e8ebf2; padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
p.note { color: #566074; font-size: 13px; }
.strip { display: flex; flex-wrap: wrap; gap: 3px; margin: 10px 0; }
.strip span { width: 30px; padding: 4px 0; text-align: center; border-radius: 3px; font-size: 12px; color: #fff; }
.strip .npu { background: #1f77b4; }
.strip .cpu { background: #d62728; }
.legend span { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin: 0 4px 0 12px; vertical-align: -1px; }
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page: header, contents, sections — no external CSS, scripts or fonts."""
    contents = "".join(f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{escape(s.anchor)}">\n<h2>{escape(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>\n"
        f"<nav>{contents}</nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
