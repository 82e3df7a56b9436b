"""Every report type opened in a real headless Chromium: no broken image, no console error, non-empty tables.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and the
``selenium`` Python package; nothing is downloaded at run time (the driver path is given explicitly, so Selenium
Manager is never asked for a browser). Skips only when these are absent. Screenshots go to ``$GLFUSE_SCREENSHOTS``
when set (CI artefacts), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from _report_fixtures import all_reports

CHROMIUM = os.environ.get("GLFUSE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GLFUSE_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                                reason="chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")

_CHECK_JS = """
const imgs = Array.from(document.images);
const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40));
const tables = Array.from(document.querySelectorAll('table'));
const empty = tables.filter(t => t.querySelectorAll('tbody tr td').length === 0
                               || !Array.from(t.querySelectorAll('td')).some(td => td.textContent.trim())).length;
return {images: imgs.length, broken: broken, tables: tables.length, empty_tables: empty,
        height: document.body.scrollHeight, width: document.body.scrollWidth};
"""


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="glfuse-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(drv, page: Path, shot: Path) -> tuple[dict, list[dict]]:
    drv.get_log("browser")  # drop messages of earlier pages
    drv.get(page.resolve().as_uri())
    info = drv.execute_script(_CHECK_JS)
    drv.set_window_size(1280, min(int(info["height"]) + 120, 12000))
    shot.parent.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(shot))
    errors = [e for e in drv.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    return info, errors


def test_every_report_type_renders(browser, tmp_path):
    folders = all_reports(tmp_path / "reports")
    shots = Path(os.environ.get("GLFUSE_SCREENSHOTS") or tmp_path / "screenshots")
    for kind, folder in folders.items():
        info, errors = _open(browser, folder / "report.html", shots / f"{kind}.png")
        assert info["images"] >= 1, kind
        assert not info["broken"], (kind, info["broken"])
        assert not errors, (kind, errors)
        assert info["tables"] >= 1 and info["empty_tables"] == 0, (kind, info)
        assert info["width"] <= 1280, (kind, "page wider than the window", info["width"])
        assert (shots / f"{kind}.png").stat().st_size > 5000


def test_checker_catches_a_broken_image_and_a_console_error(browser, tmp_path):
    """The assertions above can fail: a broken image and a script error are detected."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><body><img alt="bad" src="data:image/png;base64,AAAA">'
                    "<table><tbody></tbody></table><script>undefined_function()</script></body></html>")
    info, errors = _open(browser, page, tmp_path / "bad.png")
    assert info["broken"] == ["bad"] and info["empty_tables"] == 1
    assert errors and "undefined_function" in errors[0]["message"]
