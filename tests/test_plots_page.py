"""`dvc plots show` renders every chart in headless Chromium with the network blocked."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, sh

VEGA_PLOTS = ["LR_range_test", "Loss", "Accuracy", "Learning_rate", "Confusion_matrix"]
PICTURES = ["lr_find", "accuracy_curve", "misclassified", "per_class_accuracy",
            "confusion_matrix"]  # fmt: skip
SCREENSHOT = ROOT / "test-artifacts" / "plots_page.png"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed here if missing; the test is skipped only if it cannot be."""
    if not shutil.which("chromium"):
        install = "apt-get update -qq && apt-get install -y -qq chromium"
        subprocess.run(install, shell=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    path = shutil.which("chromium")
    if not path:
        pytest.skip("Debian's chromium is not installed and `apt-get install chromium` failed")
    return path


def test_offline_plots_page_renders_every_chart(reproduced_copy: Path, chromium: str):
    from playwright.sync_api import sync_playwright

    project = reproduced_copy
    template = project / ".dvc" / "plots" / "offline.html"
    assert template.is_file(), "run `bash scripts/setup.sh` first: it builds the page template"
    sh("dvc", "plots", "show", "-o", "page", cwd=project)
    index = project / "page" / "index.html"
    html = index.read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html

    errors, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def block(route):
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", block)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri(), wait_until="load")
        for plot in VEGA_PLOTS:
            page.wait_for_selector(f"#{plot} canvas, #{plot} svg", timeout=20_000)
        drawn = page.evaluate(
            """ids => ids.map(id => {
                const c = document.querySelector('#' + id + ' canvas');
                if (!c) return document.querySelectorAll('#' + id + ' svg *').length > 10;
                const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let inked = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
                return c.width > 100 && c.height > 100 && inked > 1000;
            })""",
            VEGA_PLOTS,
        )
        images = page.evaluate(
            "[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])"
        )
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()

    assert drawn == [True] * len(VEGA_PLOTS), dict(zip(VEGA_PLOTS, drawn))
    for picture in PICTURES:
        widths = [w for src, w in images if src.endswith(f"plots_{picture}.png")]
        assert widths and widths[0] > 100, (picture, images)
    assert errors == []
    assert outside == []
