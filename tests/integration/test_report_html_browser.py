"""`shb report html` in a real browser (Debian's chromium, headless): the page loads without a
script error and clicking a header sorts its table. Skipped where chromium is not installed
(``apt-get install -y chromium``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from shb.store import Store
from tests.unit.test_reports import fill

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium here (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

# Run after the page's own script: record errors, click a numeric header twice, report the orders.
PROBE = """<script>
(function () {
  var out = {errors: window.__errors, tables: document.querySelectorAll('table.sortable').length};
  var table = Array.prototype.find.call(document.querySelectorAll('table.sortable'), function (t) {
    return t.tBodies[0].rows.length > 3 && t.querySelector('th.num'); });
  var th = Array.prototype.find.call(table.querySelectorAll('th'), function (h) {
    return h.classList.contains('num'); });
  var column = function () { return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    return parseFloat(r.cells[th.cellIndex].getAttribute('data-v')); }); };
  out.header = th.textContent; out.before = column();
  th.click(); out.ascending = column(); out.classAfterOne = th.className;
  th.click(); out.descending = column();
  var pre = document.createElement('pre'); pre.id = 'shb-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""
CATCH = "<script>window.__errors = []; window.addEventListener('error', function (e) { __errors.push(String(e.message)); });</script>"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from shb.cli import main

    folder = tmp_path_factory.mktemp("html")
    with Store(folder / "results.duckdb") as store:
        fill(store)
    out = folder / "report.html"
    result = CliRunner().invoke(main, ["report", "html", "--db", str(folder / "results.duckdb"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _chromium(*args, tmp_path):
    profile = tmp_path / "profile"
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


def test_page_loads_without_errors_and_headers_sort(page, tmp_path):
    text = page.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("<head>", "<head>" + CATCH, 1).replace("</body>", PROBE + "</body>", 1))
    result = _chromium("--dump-dom", probe.as_uri(), tmp_path=tmp_path)
    found = re.search(r'<pre id="shb-probe">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    out = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert out["errors"] == []
    assert out["tables"] >= 6
    assert out["ascending"] == sorted(out["ascending"]) and out["descending"] == sorted(out["descending"], reverse=True)
    assert sorted(out["before"]) == out["ascending"] and out["ascending"] != out["descending"]
    assert "asc" in out["classAfterOne"]


def test_screenshot_renders(page, tmp_path):
    shot = tmp_path / "report.png"
    _chromium("--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}", page.as_uri(), tmp_path=tmp_path)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


WIDTH_PROBE = """<script>
window.addEventListener('load', function () {
  var pre = document.createElement('pre'); pre.id = 'shb-width';
  pre.textContent = JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth});
  document.body.appendChild(pre);
});
</script>"""


def test_wide_tables_scroll_inside_themselves_not_the_page(page, tmp_path):
    """At a 1280 px window (and a narrow 700 px one) the page itself never scrolls sideways: a table
    wider than the window scrolls in its own box."""
    probe = tmp_path / "width.html"
    probe.write_text(page.read_text().replace("</body>", WIDTH_PROBE + "</body>", 1))
    for width in (1280, 700):
        result = _chromium(f"--window-size={width},900", "--dump-dom", probe.as_uri(), tmp_path=tmp_path)
        found = re.search(r'<pre id="shb-width">(.*?)</pre>', result.stdout)
        assert found, result.stderr[-2000:]
        sizes = json.loads(found.group(1))
        assert sizes["page"] <= sizes["window"], (width, sizes)
