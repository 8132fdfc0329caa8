"""What a report is drawn from: a calibration folder or a deployment bundle, and the
benchmark results JSON files. Everything is optional; what is absent is recorded as
absent so the page can say which command produces it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import QuantkitError

__all__ = ["ReportInputs", "ResultsFile", "load_report_inputs", "CALIBRATION_DATA", "DATA_DIR", "HEATMAP_PNG", "SENSITIVITY_PNG"]

DATA_DIR = "data"  # inside a report folder: the JSON the page was drawn from
HEATMAP_PNG = "outlier_heatmap.png"
SENSITIVITY_PNG = "sensitivity.png"
# ReportInputs field -> file name, in a calibration folder and in a report's data/ folder
CALIBRATION_DATA = {
    "summary": "summary.json",
    "sensitivity": "sensitivity.json",
    "placement": "placement.json",
    "config": "config.json",
    "precision": "precision.json",
}


@dataclass(frozen=True)
class ResultsFile:
    """A benchmark results JSON that was asked for: its rows, or why there are none."""

    path: Path
    data: dict | None = None
    problem: str | None = None  # set when the file exists but cannot be used

    @property
    def missing(self) -> bool:
        return self.data is None and self.problem is None


@dataclass(frozen=True)
class ReportInputs:
    source: str | None  # "calibration" | "bundle" | None (neither given)
    source_path: Path | None
    summary: dict | None = None
    sensitivity: list | None = None
    placement: dict | None = None
    config: dict | None = None
    precision: dict | None = None  # precision.json: per-graph activation bits and the search's points
    manifest: dict | None = None
    heatmap: Path | None = None  # an existing PNG to copy
    sensitivity_plot: Path | None = None  # an existing PNG, used when sensitivity.json is absent
    accuracy: ResultsFile | None = None  # None: not asked for, the section is left out
    prefill: ResultsFile | None = None
    regress: ResultsFile | None = None  # results.json of `quantkit regress`
    profile: ResultsFile | None = None  # profile.json of `quantkit profile`

    @property
    def settings(self) -> dict:
        """The calibration's settings by name: config.json holds them in sections (version 2) or flat (version 1)."""
        config = self.config or {}
        return {name: value for key, item in config.items() for name, value in (item.items() if isinstance(item, dict) else [(key, item)])}

    @property
    def model(self) -> str | None:
        for value in (
            (self.summary or {}).get("model"),
            (self.config or {}).get("model"),
            ((self.manifest or {}).get("source_model") or {}).get("id"),
            self.accuracy.data.get("model") if self.accuracy and self.accuracy.data else None,
        ):
            if value:
                return str(value)
        return None


def _read_json(path: Path, remedy: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuantkitError(f"{path}: not readable JSON ({error}); {remedy}") from error


def _calibration_data(folder: Path) -> dict:
    remedy = "run `quantkit calibrate` (and `quantkit export`) again to rewrite it"
    return {field: _read_json(folder / name, remedy) for field, name in CALIBRATION_DATA.items() if (folder / name).is_file()}


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _results_file(path: str | Path | None, list_key: str, item_keys: tuple[str, ...], shape: str, produced_by: str) -> ResultsFile | None:
    """The results JSON at ``path`` if its ``list_key`` is a non-empty list of dicts holding
    ``item_keys`` (unknown keys are kept); otherwise why it cannot be used. None: not asked for."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return ResultsFile(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return ResultsFile(path, problem=f"{path} is not valid JSON ({error}); run {produced_by} again")
    items = data.get(list_key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) and all(key in item for key in item_keys) for item in items):
        return ResultsFile(path, problem=f"{path} {shape}; run {produced_by} again")
    return ResultsFile(path, data=data)


def _results(path: str | Path | None, row_keys: tuple[str, ...], produced_by: str) -> ResultsFile | None:
    """A benchmark's results JSON: {"rows": [{row_keys...}, ...], ...}."""
    expected = "{" + '"rows": [{' + ", ".join(f'"{key}"' for key in row_keys) + ", ...}, ...]}"
    return _results_file(path, "rows", row_keys, f"does not hold results shaped {expected}", produced_by)


_CHECK_KEYS = ("candidate", "task", "metric", "check", "value", "limit", "passed")


def _regress_results(path: str | Path | None) -> ResultsFile | None:
    """The results.json of ``quantkit regress``: {"suite", "passed", "checks": [...]}."""
    shape = f"is not a `quantkit regress` results.json (a list of checks with {', '.join(_CHECK_KEYS)})"
    return _results_file(path, "checks", _CHECK_KEYS, shape, "`quantkit regress`")


_PROFILE_KEYS = ("name", "activation_bits", "cycles", "a16_cycles")


def _profile_results(path: str | Path | None) -> ResultsFile | None:
    """The profile.json of ``quantkit profile``: {"chunk_size", "clock_ghz", "graphs": [...], ...}."""
    shape = f"is not a `quantkit profile` profile.json (a list of graphs with {', '.join(_PROFILE_KEYS)})"
    return _results_file(path, "graphs", _PROFILE_KEYS, shape, "`quantkit profile BUNDLE`")


def load_report_inputs(
    calib: str | Path | None = None,
    bundle: str | Path | None = None,
    accuracy: str | Path | None = None,
    prefill: str | Path | None = None,
    regress: str | Path | None = None,
    profile: str | Path | None = None,
) -> ReportInputs:
    """Read what exists of the inputs. A named calibration folder or bundle must exist
    (a typo should not silently give an empty report); results files may be missing."""
    if calib is not None and bundle is not None:
        raise QuantkitError("pass either --calib or --bundle, not both: a bundle's report already holds its calibration's data")
    results = {
        "accuracy": _results(accuracy, ("method", "ppl"), "`python benchmarks/accuracy.py`"),
        "prefill": _results(prefill, ("config", "tokens_per_s"), "`python benchmarks/prefill.py`"),
        "regress": _regress_results(regress),
        "profile": _profile_results(profile),
    }
    if calib is not None:
        folder = Path(calib)
        if not folder.is_dir():
            raise QuantkitError(f"--calib {folder}: no such folder; pass the folder written by `quantkit calibrate --out`")
        data = _calibration_data(folder)
        if not data:
            raise QuantkitError(
                f"--calib {folder}: none of {', '.join(CALIBRATION_DATA.values())} in it; pass the folder written by `quantkit calibrate --out`"
            )
        report = folder / "report"
        return ReportInputs(
            "calibration", folder, **data, heatmap=_existing(report / HEATMAP_PNG), sensitivity_plot=_existing(report / SENSITIVITY_PNG), **results
        )
    if bundle is not None:
        from quantkit.runtime.bundle import BUNDLE_FORMAT, MANIFEST_FILE

        folder = Path(bundle)
        if not (folder / MANIFEST_FILE).is_file():
            raise QuantkitError(f"--bundle {folder}: no {MANIFEST_FILE}; pass the folder written by `quantkit export --out`")
        manifest = _read_json(folder / MANIFEST_FILE, "run `quantkit export` again")
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise QuantkitError(f"--bundle {folder}: {MANIFEST_FILE} is not a quantkit bundle manifest (expected format {BUNDLE_FORMAT!r})")
        report = folder / "report"
        data = _calibration_data(report / DATA_DIR)
        own = folder / CALIBRATION_DATA["precision"]
        if own.is_file():  # the bits the bundle was exported with (``--activation-bits`` may override the calibration's)
            data["precision"] = _read_json(own, "run `quantkit export` again")
        return ReportInputs(
            "bundle",
            folder,
            **data,
            manifest=manifest,
            heatmap=_existing(report / HEATMAP_PNG),
            sensitivity_plot=_existing(report / SENSITIVITY_PNG),
            **results,
        )
    return ReportInputs(None, None, **results)
