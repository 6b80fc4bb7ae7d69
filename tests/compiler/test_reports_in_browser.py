"""The plan and advise reports, rendered by headless Chromium (Debian's ``chromium`` package):
each shows its plots and its tables. Slow, and skipped where no browser is installed; the
structural checks of the same pages run in the quick suite (test_plan.py, test_advise.py).

What "shows" means here: the screenshot holds many pixels of matplotlib's first line colour
(the page's own style uses none of it), so the embedded plots were decoded and painted; and
pixels of the table header's background, so the tables were laid out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from npusim.client.hostcost import measure_steps
from npusim.compiler_svc.advise import AdviseConfig, advise
from npusim.compiler_svc.advise.report import advise_page
from npusim.compiler_svc.plan import PlanConfig, plan, plan_page
from npusim.services.zoo import mnist

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(BROWSER is None, reason="no chromium here: apt-get install chromium")]

PLOT_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's C0
TABLE_HEAD = (0xF6, 0xF8, 0xFA)  # th background in services/htmlreport.py


def screenshot(page: Path, out: Path, height: int = 2400) -> np.ndarray:
    """The page as Chromium paints it, RGB uint8."""
    assert BROWSER is not None
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size=1200,{height}", f"--screenshot={out}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    import matplotlib.image

    rgb = matplotlib.image.imread(str(out))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def pixels(img: np.ndarray, colour: tuple[int, int, int], tol: int = 6) -> int:
    return int(np.all(np.abs(img.astype(int) - np.array(colour)) <= tol, axis=-1).sum())


@pytest.fixture(scope="module")
def model() -> bytes:
    return mnist().SerializeToString()


def test_the_plan_report_shows_its_plots_and_tables(model: bytes, tmp_path: Path) -> None:
    report = plan(PlanConfig(workers=(1, 2, 4), batch=(1, 8), requests=300, slo="p99<2ms"), model)
    page = tmp_path / "plan.html"
    page.write_text(plan_page(report))
    img = screenshot(page, tmp_path / "plan.png")
    assert pixels(img, PLOT_BLUE) > 2000 and pixels(img, TABLE_HEAD) > 2000


def test_the_advise_report_shows_its_plots_and_tables(model: bytes, tmp_path: Path) -> None:
    result = advise(AdviseConfig(target="throughput", requests=300), model, step_costs=measure_steps)
    page = tmp_path / "advise.html"
    page.write_text(advise_page(result))
    img = screenshot(page, tmp_path / "advise.png", height=4000)
    assert pixels(img, PLOT_BLUE) > 2000 and pixels(img, TABLE_HEAD) > 2000


def test_a_page_without_its_plots_paints_no_plot_colour(tmp_path: Path) -> None:
    """The pixel test can fail: the same style with no image paints none of the plot colour."""
    from npusim.services.htmlreport import Section, Table, page

    p = tmp_path / "empty.html"
    p.write_text(page("t", "s", [Section("x", ["text"], [Table(["a"], [(1,)] * 40)])]))
    img = screenshot(p, tmp_path / "empty.png")
    assert pixels(img, PLOT_BLUE) == 0 and pixels(img, TABLE_HEAD) > 0
