"""``write_report``: every section from full inputs, valid PNGs, hints for what is
missing, escaping, bundles, and an all-or-nothing folder."""

import json
import re

import pytest
from PIL import Image

from quantkit.errors import QuantkitError
from quantkit.report import SECTIONS, Section, write_report
from tests.report.conftest import write_json

ALL_SECTIONS = {"summary", "accuracy", "prefill", "outliers", "sensitivity", "placement"}


def _section_ids(html: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)">', html))


def _section(html: str, anchor: str) -> str:
    return html.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]


def test_full_inputs_give_every_section_and_valid_images(tmp_path, calib_folder, accuracy_json, prefill_json):
    index = write_report(tmp_path / "report", calib=calib_folder, accuracy=accuracy_json, prefill=prefill_json)
    assert index == tmp_path / "report" / "index.html"
    html = index.read_text(encoding="utf-8")
    assert _section_ids(html) == ALL_SECTIONS
    images = re.findall(r'<img src="([^"]+)"', html)
    assert set(images) == {"outlier_heatmap.png", "sensitivity.png", "accuracy_delta_ppl.png", "prefill_speed.png", "calibration_stages.png"}
    assert "512 MB (stage statistics)" in _section(html, "summary")  # the stage that set the run's peak
    for name in images:
        with Image.open(index.parent / name) as image:
            image.verify()
            assert image.format == "PNG", name
            assert name == "outlier_heatmap.png" or min(image.size) >= 300, (name, image.size)  # a copy of the 4×16 fixture; the rest drawn here
    assert 'class="hint"' not in html
    # figures come from the inputs: speed-ups over hf_fp32, ΔPPL, placement, shadow share
    assert "×3.00" in _section(html, "prefill") and "×2.50" in _section(html, "prefill")
    accuracy = _section(html, "accuracy")
    assert "+300.00%" in accuracy and "2.00 MB (2.00%)" in accuracy and "n/a (dynamic)" in accuracy and "α=0.8" in accuracy
    assert '<span class="cpu" title="block 0: cpu-fp">0</span>' in _section(html, "placement")
    assert "+0.50%" in _section(html, "summary") and "1,000 parameters (1.00% of the model)" in _section(html, "summary")
    assert "layers.0.mlp.gate_proj (+up_proj)" in _section(html, "outliers")
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:|//|/)', html) and "<script" not in html
    # the JSON it was drawn from travels with it
    assert json.loads((index.parent / "data" / "prefill.json").read_text())["rows"][4]["tokens_per_s"] == 300.0
    assert {p.name for p in (index.parent / "data").iterdir()} == {
        "summary.json",
        "sensitivity.json",
        "placement.json",
        "config.json",
        "accuracy.json",
        "prefill.json",
    }


def test_missing_inputs_name_the_command_that_makes_them(tmp_path):
    html = write_report(tmp_path / "report", accuracy=tmp_path / "none" / "accuracy.json", prefill=tmp_path / "none" / "prefill.json").read_text()
    assert _section_ids(html) == ALL_SECTIONS
    assert "python benchmarks/accuracy.py" in _section(html, "accuracy")
    assert "python benchmarks/prefill.py" in _section(html, "prefill")
    for anchor in ("summary", "outliers", "sensitivity", "placement"):
        assert "quantkit calibrate --out calib" in _section(html, anchor), anchor
    assert not list((tmp_path / "report").glob("*.png"))


def test_results_not_asked_for_leave_their_sections_out(tmp_path, calib_folder):
    html = write_report(tmp_path / "report", calib=calib_folder).read_text()
    assert _section_ids(html) == ALL_SECTIONS - {"accuracy", "prefill"}


def test_unusable_results_files_are_explained_not_raised(tmp_path, calib_folder):
    broken = tmp_path / "accuracy.json"
    broken.write_text("{not json")
    wrong_shape = write_json(tmp_path / "prefill.json", {"rows": [{"config": "hf_fp32", "tokens_per_second": 1.0}]})
    html = write_report(tmp_path / "report", calib=calib_folder, accuracy=broken, prefill=wrong_shape).read_text()
    assert "is not valid JSON" in _section(html, "accuracy") and "python benchmarks/accuracy.py" in _section(html, "accuracy")
    assert "&quot;tokens_per_s&quot;" in _section(html, "prefill") and "run `python benchmarks/prefill.py` again" in _section(html, "prefill")


def test_text_from_inputs_is_escaped(tmp_path, calib_folder, accuracy_json):
    summary = json.loads((calib_folder / "summary.json").read_text())
    summary["model"] = "<script>alert('x')</script>"
    write_json(calib_folder / "summary.json", summary)
    results = json.loads(accuracy_json.read_text())
    results["rows"].append({"method": "<b>&mine", "ppl": 11.0})
    write_json(accuracy_json, results)
    html = write_report(tmp_path / "report", calib=calib_folder, accuracy=accuracy_json).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>" not in html and "&lt;b&gt;&amp;mine" in html


def test_a_failing_section_leaves_no_folder_behind(tmp_path, calib_folder):
    out = tmp_path / "report"
    write_report(out, calib=calib_folder)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_section(inputs, folder):
        (folder / "half.png").write_bytes(b"\x89PNG")
        raise RuntimeError("section failed")

    with pytest.raises(RuntimeError, match="section failed"):
        write_report(out, calib=calib_folder, sections=[*SECTIONS, broken_section])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the old report, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "fresh", calib=calib_folder, sections=[broken_section])
    assert not (tmp_path / "fresh").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path, calib_folder):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(QuantkitError, match=r"holds files that are not part of a report \(notes.txt\)"):
        write_report(out, calib=calib_folder)
    assert (out / "notes.txt").read_text() == "keep"


def test_extra_sections_extend_the_page(tmp_path, calib_folder):
    def lm_eval_section(inputs, folder):
        return Section("lm-eval", "Task accuracy", "<p>planned</p>")

    html = write_report(tmp_path / "report", calib=calib_folder, sections=[*SECTIONS, lm_eval_section]).read_text()
    assert list(re.findall(r'<section id="([^"]+)">', html))[-1] == "lm-eval"
    assert '<a href="#lm-eval">Task accuracy</a>' in html


def _bundle(tmp_path, calib_folder, with_data: bool):
    bundle = tmp_path / "bundle"
    if with_data:
        write_report(bundle / "report", calib=calib_folder)
    else:
        (bundle / "report").mkdir(parents=True)
        (bundle / "report" / "outlier_heatmap.png").write_bytes((calib_folder / "report" / "outlier_heatmap.png").read_bytes())
    (bundle / "npu").mkdir()
    (bundle / "npu" / "block01.qkv.onnx").write_bytes(b"\0" * 2_000_000)
    manifest = {
        "format": "quantkit-bundle",
        "version": 1,
        "source_model": {"id": "tiny-test-model", "sha256": "ab" * 32},
        "chunk_size": 16,
        "quantization": {"activation_bits": 8, "activations": "int8 per tensor", "weights": "int8 per channel"},
        "placement": ["cpu-fp", "npu", "npu", "npu"],
        "graphs": [{"name": "block01.qkv", "file": "npu/block01.qkv.onnx"}],
        "qnn_target": None,
        "files": {"npu/block01.qkv.onnx": "0" * 64},
    }
    write_json(bundle / "manifest.json", manifest)
    return bundle


def test_bundle_report_reads_the_manifest_and_the_data_its_report_carries(tmp_path, calib_folder, accuracy_json):
    bundle = _bundle(tmp_path, calib_folder, with_data=True)
    html = write_report(tmp_path / "report", bundle=bundle, accuracy=accuracy_json).read_text()
    assert _section_ids(html) == ALL_SECTIONS - {"prefill"} | {"bundle"}
    assert 'class="hint"' not in html
    assert "1 QDQ ONNX graphs, W8A8, 2.0 MB" in _section(html, "bundle")
    assert "+0.50%" in _section(html, "summary")


def test_bundle_exported_before_reports_carried_data(tmp_path, calib_folder):
    bundle = _bundle(tmp_path, calib_folder, with_data=False)
    html = write_report(tmp_path / "report", bundle=bundle).read_text()
    assert "exported before reports carried their data" in _section(html, "summary")
    assert '<img src="outlier_heatmap.png"' in _section(html, "outliers")
    assert '<span class="cpu" title="block 0: cpu-fp">0</span>' in _section(html, "placement")  # from the manifest
    with pytest.raises(QuantkitError, match="inside the bundle"):
        write_report(bundle / "report", bundle=bundle)


def test_named_sources_must_exist(tmp_path, calib_folder):
    with pytest.raises(QuantkitError, match="no such folder"):
        write_report(tmp_path / "report", calib=tmp_path / "typo")
    with pytest.raises(QuantkitError, match="no manifest.json"):
        write_report(tmp_path / "report", bundle=calib_folder)
    with pytest.raises(QuantkitError, match="either --calib or --bundle"):
        write_report(tmp_path / "report", calib=calib_folder, bundle=calib_folder)
    assert not (tmp_path / "report").exists()


def test_regress_results_become_a_table_with_the_regressions_marked(tmp_path, calib_folder):
    from quantkit.eval.regress import Suite, TaskCheck, compare

    suite = Suite("tiny", "fp", (TaskCheck("quantkit_lastword", "acc", min_ratio_to_reference=0.99),), {"good": "a", "bad": "b"})
    report = compare(suite, {"quantkit_lastword": 0.5}, {"good": {"quantkit_lastword": 0.5}, "bad": {"quantkit_lastword": 0.1}})
    results = tmp_path / "regress" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(report.to_dict()))
    page = write_report(tmp_path / "report", calib=calib_folder, regress=results).read_text()
    assert "Accuracy regression suite" in page and "REGRESSED" in page and "1 of 2 checks regressed" in page
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    page = write_report(tmp_path / "report", calib=calib_folder, regress=tmp_path / "bad.json").read_text()
    assert "is not a `quantkit regress` results.json" in page
    page = write_report(tmp_path / "report", calib=calib_folder, regress=tmp_path / "none.json").read_text()
    assert "quantkit regress eval/suites/smollm2.yaml" in page


def test_profile_becomes_the_htp_cost_section(tmp_path, calib_folder):
    from quantkit.export.profile import GraphCost, HtpProfile, write_profile

    graphs = [GraphCost(f"block00.{kind}", kind, 0, bits, cycles, 3 * cycles) for kind, bits, cycles in (("qkv", 8, 10_000_000), ("down", 16, 30_000_000))]
    path = write_profile(HtpProfile(60, None, 256, 1.0, 1, graphs), tmp_path / "profile")
    page = write_report(tmp_path / "report", calib=calib_folder, profile=path).read_text()
    assert "NPU cost on the HTP" in page and (tmp_path / "report" / "htp_profile.png").stat().st_size > 0
    assert "40.0 M cycles per 256-token chunk → 6,400 tokens/s" in page  # 256 tokens / (40 M cycles / 1 GHz)
    assert "every graph A16" in page and "120.0 M cycles per chunk" in page and "3.00× the cycles" in page
    missing = write_report(tmp_path / "report2", calib=calib_folder, profile=tmp_path / "nowhere" / "profile.json").read_text()
    assert "quantkit profile BUNDLE" in missing
