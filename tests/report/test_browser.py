"""The page in a real browser: headless Chromium renders it offline and takes a
screenshot (slow tier; skipped where no chromium is installed — quantkit does not need it)."""

import shutil
import subprocess

import pytest
from PIL import Image

from quantkit.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(index, png, profile, width=1280, height=2400) -> subprocess.CompletedProcess:
    """Headless Chromium with no network, sync or first-run work, on a fresh profile."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            index.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_page_renders_in_chromium(tmp_path, calib_folder, accuracy_json, prefill_json):
    index = write_report(tmp_path / "report", calib=calib_folder, accuracy=accuracy_json, prefill=prefill_json)
    png = tmp_path / "page.png"
    result = screenshot(index, png, tmp_path / "profile")
    assert result.returncode == 0 and png.is_file(), result.stderr[-2000:]
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1280, 2400)
        header = rgb.getpixel((5, 5))
        assert header == (0x1D, 0x23, 0x30), header  # the dark header: the page's own CSS applied
        colours = rgb.resize((64, 120)).getcolors(64 * 120)
        assert colours is not None and len(colours) > 20  # images and tables drawn, not a blank page
