"""The activation-precision section: the NPU MACs at A8, the search's Pareto curve and
the blocks × graphs map from precision.json; left out without it; the bundle and
accuracy sections' bit-widths."""

import json
import re

from PIL import Image

from quantkit.report import write_report
from tests.report.conftest import precision_plan, write_json
from tests.report.test_write import _bundle, _section, _section_ids

PRECISION_PNGS = {"precision_pareto.png", "precision_map.png"}


def test_precision_section_draws_the_search_and_the_map(tmp_path, precision_calib_folder):
    index = write_report(tmp_path / "report", calib=precision_calib_folder)
    html = index.read_text()
    assert "precision" in _section_ids(html)
    section = _section(html, "precision")
    assert set(re.findall(r'<img src="([^"]+)"', section)) == PRECISION_PNGS
    for name in PRECISION_PNGS:
        with Image.open(index.parent / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) >= 200, (name, image.size)
    # the share over the NPU blocks (block 0 is on the CPU), not over all four
    assert "77.8% (the rest A16)" in section and "83.3% (the rest" not in section  # 1 - 300/1350, not 1 - 300/1800
    assert "2 of 12: block02.down, block02.gate_up" in section
    # the search's points, the chosen one (2 promoted, within +1%) highlighted
    assert '<tr class="highlight"><td class="num">2</td><td class="num">83.3%</td><td class="num">10.080</td><td class="num">+0.80%</td></tr>' in section
    assert section.count('<tr class="highlight">') == 1
    assert json.loads((index.parent / "data" / "precision.json").read_text())["mode"] == "auto"


def test_without_precision_json_the_section_is_left_out(tmp_path, calib_folder):
    index = write_report(tmp_path / "report", calib=calib_folder)
    assert "precision" not in _section_ids(index.read_text())
    assert not PRECISION_PNGS & {p.name for p in index.parent.iterdir()}


def test_uniform_bits_give_the_map_but_no_curve(tmp_path, calib_folder):
    precision_plan("16").save(calib_folder / "precision.json")
    index = write_report(tmp_path / "report", calib=calib_folder)
    section = _section(index.read_text(), "precision")
    assert "16: every NPU graph A16" in section and "0.0% (the rest A16)" in section and "12 of 12" in section
    assert re.findall(r'<img src="([^"]+)"', section) == ["precision_map.png"]


def test_an_unreadable_precision_plan_says_to_recalibrate(tmp_path, calib_folder):
    write_json(calib_folder / "precision.json", {"version": 0, "mode": "auto", "graphs": {}})
    section = _section(write_report(tmp_path / "report", calib=calib_folder).read_text(), "precision")
    assert "precision.json cannot be read" in section and "quantkit calibrate --out CALIB --overwrite" in section


def test_mixed_bundle_shows_its_a8_share_and_its_own_bits(tmp_path, precision_calib_folder):
    bundle = _bundle(tmp_path, precision_calib_folder, with_data=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["quantization"].update(activation_bits="mixed", a8_mac_share=0.62)
    write_json(bundle / "manifest.json", manifest)
    html = write_report(tmp_path / "report", bundle=bundle).read_text()
    assert "1 QDQ ONNX graphs, W8A8/A16 mixed (62% of NPU MACs at A8), 2.0 MB" in _section(html, "bundle")
    assert "auto: each NPU graph" in _section(html, "precision")  # from the data its report carries
    precision_plan("8").save(bundle / "precision.json")  # exported with --activation-bits 8: the bundle's own plan wins
    manifest["quantization"].update(activation_bits=8, a8_mac_share=1.0)
    write_json(bundle / "manifest.json", manifest)
    html = write_report(tmp_path / "report", bundle=bundle).read_text()
    assert "1 QDQ ONNX graphs, W8A8, 2.0 MB" in _section(html, "bundle")
    assert "8: every NPU graph A8" in _section(html, "precision") and "100.0% (the rest A16)" in _section(html, "precision")


def test_accuracy_section_shows_the_a8_share_when_rows_have_it(tmp_path, calib_folder, accuracy_json):
    old = _section(write_report(tmp_path / "old", calib=calib_folder, accuracy=accuracy_json).read_text(), "accuracy")
    assert "NPU MACs at A8" not in old
    results = json.loads(accuracy_json.read_text())
    shares = {"fp": None, "naive_w8a8": 1.0, "smoothquant_static": 1.0, "llm_int8": None, "quantkit": 0.75}
    for row in results["rows"]:
        row["a8_mac_share"] = shares[row["method"]]
    results["rows"].insert(2, {"method": "naive_w8a16", "ppl": 10.3, "npu_blocks": 4, "shadow_bytes": 0, "a8_mac_share": 0.0})
    results["rows"][-1].update(method="quantkit_auto", calibrated=True)
    results["rows"].insert(-1, {"method": "quantkit_w8a8", "ppl": 10.6, "npu_blocks": 3, "shadow_bytes": 2_000_000, "a8_mac_share": 1.0, "calibrated": False})
    write_json(accuracy_json, results)
    new = _section(write_report(tmp_path / "new", calib=calib_folder, accuracy=accuracy_json).read_text(), "accuracy")
    assert '<th class="num">NPU MACs at A8</th>' in new
    assert (
        '<td>naive W8A16 (AIMET, per-tensor)</td><td class="num">10.300</td><td class="num">+3.00%</td><td class="num">4/4</td><td class="num">0%</td>' in new
    )
    assert '<tr class="highlight"><td>quantkit, per-graph A8/A16 (auto)</td>' in new and new.count('<tr class="highlight">') == 1
    assert '<td class="num">75%</td>' in new and '<td class="num">n/a</td>' in new


def test_four_bit_weights_show_in_the_map_the_facts_and_the_bundle(tmp_path, calib_folder):
    plan = precision_plan("16")
    for graph in plan.graphs.values():
        if graph.kind != "down":
            graph.weight_bits, graph.weight_block_size = 4, 32
        if graph.kind == "gate_up":
            graph.weight_block_offsets = "int4"
    plan.save(calib_folder / "precision.json")
    summary = json.loads((calib_folder / "summary.json").read_text())
    write_json(calib_folder / "summary.json", {**summary, "npu_weight_bytes_vs_int8": 0.62})
    index = write_report(tmp_path / "report", calib=calib_folder)
    section = _section(index.read_text(), "precision")
    assert (
        "9 of 12 NPU graphs INT4 (LPBQ blocks of 32), the rest INT8; int4 block offsets on 3 of the INT4 graphs; NPU weight bytes 62.0% of INT8 weights"
        in section
    )
    assert "W4A16 green, dark green with block offsets" in section
    bundle = _bundle(tmp_path, calib_folder, with_data=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["quantization"].update(activation_bits=16, weight_bits=4, npu_weight_bytes_vs_w8=0.534)
    write_json(bundle / "manifest.json", manifest)
    html = write_report(tmp_path / "report2", bundle=bundle).read_text()
    assert "1 QDQ ONNX graphs, W4A16, weight bytes 53.4% of W8, 2.0 MB" in _section(html, "bundle")
