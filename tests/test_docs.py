"""The documents: README.md and docs/*.md tables equal what benchmarks/render.py renders
from benchmarks/results/*.json; nothing cites a document that is not in the repository;
README, docs and code comments describe the project, not its history.

Fast: reads text and JSON only, imports nothing heavy."""

import ast
import importlib.util
import io
import json
import re
import shutil
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("quantkit", "runtime", "eval", "benchmarks", "tests")
# Generated from the argparse parsers by its own script; linked before it is written.
GENERATED_ELSEWHERE: set[str] = set()  # pages another tool writes, cited before they exist


def _renderer():
    spec = importlib.util.spec_from_file_location("render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _renderer()


def _documents() -> list[Path]:
    return [path for path in render.documents(ROOT) if path.is_file()]


def _python_files() -> list[Path]:
    return [path for folder in CODE_FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every comment and docstring line of a Python file."""
    source = path.read_text()
    found = [(token.start[0], token.string) for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found += [(node.body[0].lineno + i, line) for i, line in enumerate(docstring.splitlines())]
    return found


# --- tables ------------------------------------------------------------------------------


def test_readme_and_docs_tables_equal_the_rendered_results():
    stale = render.check(ROOT, render.RESULTS)
    assert not stale, f"tables differ from benchmarks/results in {[p.relative_to(ROOT).as_posix() for p in stale]}: run `python benchmarks/render.py`"


def test_every_table_is_shown_and_the_presets_in_the_readme():
    shown = {match.group("name") for path in _documents() for match in render.MARKER.finditer(path.read_text())}
    assert shown == set(render.TABLES)
    assert "<!-- results:presets -->" in (ROOT / "README.md").read_text()


def test_a_changed_results_file_makes_the_readme_stale(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results)
    data = json.loads((results / "activations.json").read_text())
    row = next(r for r in data["rows"] if r["technique"] == "calibrated plan (precision.json)")
    row["a8_mac_share"] = 0.5
    (results / "activations.json").write_text(json.dumps(data))
    readme = (ROOT / "README.md").read_text()
    rendered = render.render_text(readme, render.render_tables(results))
    assert rendered != readme
    assert "| 50.0% |" in rendered


def test_render_replaces_only_between_markers_and_refuses_unknown_tables():
    text = "before\n<!-- results:presets -->\nold\n<!-- /results -->\nafter\n"
    assert render.render_text(text, {"presets": "NEW"}) == "before\n<!-- results:presets -->\nNEW\n<!-- /results -->\nafter\n"
    with pytest.raises(SystemExit, match="unknown results table"):
        render.render_text(text.replace("presets", "nonesuch"), {"presets": "NEW"})


# --- citations ---------------------------------------------------------------------------

# Documents that exist only outside this repository, by the names they go by.
OUTSIDE = re.compile(r"\b(?:DESIGN|STYLE|OFFLINE_ASSETS|ISSUES)(?:\.md)?\b|design card|issue notes|\bshared/")
MARKDOWN_FILE = re.compile(r"(?<![\w/.:-])((?:\.{1,2}/)?[\w./-]*\w\.md)\b")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _texts_to_scan() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "constraints.txt", "pyproject.toml", "install.sh")]
    files += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "eval" / "suites").rglob("*.yaml"))
    return [path for path in files + _python_files() if path.is_file() and path != Path(__file__).resolve()]


def _repository_files() -> set[str]:
    skip = {".git", ".venv", "node_modules", "__pycache__"}
    return {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)}


REPOSITORY_MD = _repository_files()


def _exists(cited: str, citing: Path) -> bool:
    """A path as the repository or the citing file's folder resolves it; ``OUT/x.md`` (a
    command's output folder) and a bare name stand for any file of that name in the repository."""
    cited = cited.removeprefix("OUT/").strip("/")
    if cited in GENERATED_ELSEWHERE or (ROOT / cited).exists() or (citing.parent / cited).exists():
        return True
    return "/" not in cited and any(path.rsplit("/", 1)[-1] == cited for path in REPOSITORY_MD)


def test_nothing_cites_a_document_outside_the_repository():
    problems = []
    for path in _texts_to_scan():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            problems += [f"{where}: cites {m.group(0)!r}, which is not in the repository" for m in OUTSIDE.finditer(line)]
            problems += [f"{where}: cites {m.group(1)}, no such file" for m in MARKDOWN_FILE.finditer(line) if not _exists(m.group(1), path)]
            if path.suffix == ".md":
                problems += [
                    f"{where}: links {m.group(1)}, no such file" for m in LINK.finditer(line) if "://" not in m.group(1) and not _exists(m.group(1), path)
                ]
    assert not problems, "\n".join(problems)


def test_the_citation_check_can_fail(tmp_path):
    assert OUTSIDE.search("the bundle (see DESIGN.md)") and OUTSIDE.search("see DESIGN / offline assets notes")
    assert not _exists("docs/nonesuch.md", ROOT / "README.md") and not _exists("NOTES.md", ROOT / "README.md")
    assert _exists("OUT/accuracy.md", ROOT / "benchmarks" / "accuracy.py")
    assert _exists("docs/design.md", ROOT / "README.md") and _exists("design.md", ROOT / "docs" / "method.md")


# --- history -----------------------------------------------------------------------------

HISTORY = re.compile(r"session|last run|earlier run", re.IGNORECASE)
# ONNX Runtime's own vocabulary: its classes, config keys, and the helpers that make sessions.
ORT_WORDS = re.compile(
    r"InferenceSession|SessionOptions|sess_options|\w+_session\b|\bsession\.[\w.]+|\bsessions\.(?:py|\w+_session)\b|\b(?:ONNX Runtime|ORT|HTP|CPU|QNN)(?: CPU)?(?: and QNN HTP)? sessions?\b"
)  # also runtime/sessions.py, the module that makes them


def _history(text: str) -> bool:
    return bool(HISTORY.search(ORT_WORDS.sub("", text)))


def test_readme_docs_and_comments_tell_no_project_history():
    found = []
    for path in _documents():
        found += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1) if _history(line)]
    for path in _python_files():
        if path != Path(__file__).resolve():
            found += [f"{path.relative_to(ROOT)}:{n}: {text.strip()}" for n, text in sorted(set(_comments_and_docstrings(path))) if _history(text)]
    assert not found, "history in README/docs/comments (say what the code does, not what a run did):\n" + "\n".join(found)


def test_the_history_check_can_fail():
    assert _history("Measured in the last run on this machine") and _history("an earlier session found")
    assert not _history("ort.InferenceSession(path, sess_options=SessionOptions()); cpu_session(); session.disable_cpu_ep_fallback")
    assert not _history("An HTP session with CPU fallback disabled; ONNX Runtime sessions on the CPU")


def test_docs_name_only_modules_that_exist():
    """A module path in README or docs (`quantkit/…py`, `runtime/…py`, `eval/…py`, `benchmarks/…py`) is a file of the repository."""
    named = re.compile(r"`((?:quantkit|runtime|eval|benchmarks|tests)/[\w/]+\.py)")
    missing = [f"{path.relative_to(ROOT)}: {module}" for path in _documents() for module in named.findall(path.read_text()) if not (ROOT / module).exists()]
    assert not missing, missing
