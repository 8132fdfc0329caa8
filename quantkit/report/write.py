"""``write_report``: the report folder — ``index.html``, its PNGs and the JSON it was
drawn from (``data/``) — written to a temporary folder and renamed into place whole."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from quantkit import __version__
from quantkit.cache import atomic_directory
from quantkit.errors import QuantkitError
from quantkit.report.html import render_page
from quantkit.report.inputs import CALIBRATION_DATA, DATA_DIR, ReportInputs, load_report_inputs
from quantkit.report.sections import SECTIONS, SectionBuilder

__all__ = ["write_report", "INDEX_FILE"]

INDEX_FILE = "index.html"


def _check_replaceable(out: Path, bundle: str | Path | None) -> None:
    """``out`` is replaced whole: refuse a folder that is not a report, and a bundle's own
    report (its files are hashed in the manifest)."""
    if bundle is not None and out.resolve().is_relative_to(Path(bundle).resolve()):
        raise QuantkitError(f"--out {out} lies inside the bundle {bundle}, whose files are hashed in its manifest; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise QuantkitError(f"--out {out} is a file; choose a folder for the report")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not (p.name == INDEX_FILE or p.suffix == ".png" or (p.name == DATA_DIR and p.is_dir())))
        if foreign:
            raise QuantkitError(
                f"--out {out} holds files that are not part of a report ({', '.join(foreign[:3])}); choose another folder — it would be replaced whole"
            )


def _write_data(inputs: ReportInputs, folder: Path) -> None:
    """The JSON the page was drawn from, so a copied report (e.g. a bundle's) can be redrawn."""
    values = {name: getattr(inputs, field) for field, name in CALIBRATION_DATA.items()}
    values.update({f"{name}.json": getattr(inputs, name).data for name in ("accuracy", "prefill") if getattr(inputs, name) is not None})
    for name, value in values.items():
        if value is not None:
            folder.mkdir(exist_ok=True)
            (folder / name).write_text(json.dumps(value, indent=1), encoding="utf-8")


def _subtitle(inputs: ReportInputs) -> str:
    parts = [f"quantkit {__version__}"]
    parts.append({"calibration": "from a calibration folder", "bundle": "from a deployment bundle"}.get(inputs.source, "no calibration given"))
    for results in (inputs.accuracy, inputs.prefill):
        if results is not None and results.data is not None:
            parts.append(results.path.name)
    return " · ".join(parts)


def write_report(
    out: str | Path = "report",
    *,
    calib: str | Path | None = None,
    bundle: str | Path | None = None,
    accuracy: str | Path | None = None,
    prefill: str | Path | None = None,
    regress: str | Path | None = None,
    profile: str | Path | None = None,
    sections: Sequence[SectionBuilder] = SECTIONS,
) -> Path:
    """Write the report page of a calibration folder (``calib``) or bundle (``bundle``),
    with the accuracy and prefill benchmark results, a ``quantkit regress`` results.json
    and a ``quantkit profile`` profile.json if given, to ``out``; returns the
    path of ``index.html``. A results file that is given but absent becomes a section
    naming the command that produces it; ``None`` leaves its section out.

    >>> from quantkit.report import write_report
    >>> write_report("report", calib="calib", accuracy="benchmarks/results/accuracy.json")  # doctest: +SKIP
    PosixPath('report/index.html')
    """
    out = Path(out)
    inputs = load_report_inputs(calib=calib, bundle=bundle, accuracy=accuracy, prefill=prefill, regress=regress, profile=profile)
    _check_replaceable(out, bundle)
    with atomic_directory(out) as staging:
        built = [section for section in (builder(inputs, staging) for builder in sections) if section is not None]
        _write_data(inputs, staging / DATA_DIR)
        title = "quantkit report" + (f" — {Path(inputs.model).name}" if inputs.model else "")  # a model folder's name, not its path
        (staging / INDEX_FILE).write_text(render_page(title, _subtitle(inputs), built), encoding="utf-8")
    return out / INDEX_FILE
