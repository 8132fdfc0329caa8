"""docs/cli.md is generated from the parsers, and every flag says what it means."""

import argparse
from pathlib import Path

import pytest

from quantkit.cli import build_parser
from quantkit.cli_docs import cli_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_text():
    assert DOCS.read_text(encoding="utf-8") == cli_markdown(), "docs/cli.md is stale: run `python -m quantkit.cli_docs > docs/cli.md`"


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("quantkit", parser), *action.choices.items()]


@pytest.mark.parametrize("name, parser", _subparsers(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_flag_has_a_help_sentence_not_only_its_default(name, parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = (action.help or "").split("(default:")[0].strip()
        assert len(text.split()) >= 4, f"{name} {action.option_strings or action.dest}: help {action.help!r} does not say what it means"


def test_the_page_lists_every_flag_of_every_subcommand():
    page = cli_markdown()
    for name, parser in _subparsers():
        assert name == "quantkit" or f"## quantkit {name}\n" in page
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page or f", {flag}" in page, f"{name} {flag}"
    assert "| `--weight-bytes-budget X` | with block offsets:" in page
