"""The precision plots draw what they are given: real PNGs whose cells and points carry
the colours of the bit-widths and placements passed in."""

import numpy as np
from PIL import Image

from quantkit.report.plots import PRECISION_COLOURS, plot_precision_map, plot_precision_pareto

KINDS = ("qkv", "o", "gate_up", "down")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def _pixel_count(path, hex_colour: str) -> int:
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    return int((pixels == np.array(_rgb(hex_colour))).all(axis=-1).sum())


def test_precision_map_colours_each_cell_by_its_bits_or_cpu(tmp_path):
    mixed = [["CPU-FP", "A8", "A16", "A8"] for _ in KINDS]
    plot_precision_map(mixed, KINDS, tmp_path / "mixed.png")
    plot_precision_map([["A8"] * 4 for _ in KINDS], KINDS, tmp_path / "a8.png")
    with Image.open(tmp_path / "mixed.png") as image:
        assert min(image.size) >= 200
    # the legend shows every colour once; cells add to them only where they are used
    legend = {name: _pixel_count(tmp_path / "a8.png", colour) for name, colour in PRECISION_COLOURS.items()}
    cells = {name: _pixel_count(tmp_path / "mixed.png", colour) for name, colour in PRECISION_COLOURS.items()}
    assert all(count > 0 for count in legend.values())
    assert cells["CPU-FP"] > 20 * legend["CPU-FP"] and cells["A16"] > 20 * legend["A16"]
    assert legend["A8"] > 1.5 * cells["A8"]  # 16 A8 cells against 8
    plot_precision_map([["W4A16", "W4A16+offsets", "W4A16", "W4A16"] for _ in KINDS], KINDS, tmp_path / "w4.png")
    four = {name: _pixel_count(tmp_path / "w4.png", colour) for name, colour in PRECISION_COLOURS.items()}
    assert four["W4A16+offsets"] > 10 * legend["W4A16+offsets"] and four["W4A16"] > 2 * four["W4A16+offsets"]  # 4 cells with offsets, 12 without


def test_pareto_marks_the_chosen_point_and_the_placed_one(tmp_path):
    shares, deltas = [100.0, 88.9, 83.3, 0.0], [4.0, 2.0, 0.8, 0.1]
    plot_precision_pareto(shares, deltas, 2, 1.0, tmp_path / "chosen.png", placed=(77.8, 0.5))
    plot_precision_pareto(shares, deltas, None, 1.0, tmp_path / "none.png")
    with Image.open(tmp_path / "chosen.png") as image:
        assert min(image.size) >= 300
    highlight, placed = "#1f77b4", PRECISION_COLOURS["CPU-FP"]
    assert _pixel_count(tmp_path / "chosen.png", highlight) > _pixel_count(tmp_path / "none.png", highlight) + 50
    assert _pixel_count(tmp_path / "chosen.png", placed) > _pixel_count(tmp_path / "none.png", placed) + 30
