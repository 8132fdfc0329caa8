"""The report page: ``index.html`` with PNG plots of a calibration or bundle (outlier
heat-map, per-block sensitivity, placement, per-graph activation bits and their Pareto
curve) and of the benchmarks (accuracy of FP vs naive W8A8/W8A16 vs SmoothQuant vs
quantkit, prefill speed). Used by ``quantkit report``, ``quantkit calibrate`` and
``quantkit export``."""

from quantkit.report.html import Section
from quantkit.report.inputs import ReportInputs, load_report_inputs
from quantkit.report.sections import SECTIONS, SectionBuilder
from quantkit.report.write import INDEX_FILE, write_report

__all__ = ["write_report", "load_report_inputs", "ReportInputs", "Section", "SectionBuilder", "SECTIONS", "INDEX_FILE"]
