"""The demo pipeline on a tiny model: stages, report, resume; and its report read in a real browser."""

import json
import os
import shutil

import pandas as pd
import pytest
from conftest import demo_probes

from unpact_mech.experiments import run_demo

SETTINGS = {"ga_gdr": {"lr": 1e-3, "fmt": "plain"}, "rmu": {"lr": 1e-3, "rmu_layer": 1, "fmt": "plain"}}


@pytest.fixture(scope="module")
def demo_out(tiny_llama_dir, tmp_path_factory):
    """One small demo run (two methods, 2 steps) shared by the tests of this module: (out dir, summary table)."""
    out = tmp_path_factory.mktemp("demo_run") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("unpact_mech.experiments.settings.SETTINGS", SETTINGS)
        t = run_demo(str(tiny_llama_dir), ["ga_gdr", "rmu"], out, steps=2, target=0.0, probes=demo_probes(),
                     known_only=False)
    return out, t


def test_demo_runs_writes_report_and_resumes(tiny_llama_dir, demo_out, monkeypatch):
    out, t = demo_out
    monkeypatch.setattr("unpact_mech.experiments.settings.SETTINGS", SETTINGS)
    assert list(t.method) == ["ga_gdr", "rmu"]
    assert {"forget_acc", "forget_acc_gen", "target_reached", "focus_before", "focus_after_low", "recovery_embed",
            "recovery_attention_random", "recovery_attention_fw_gen", "specific_embed_p", "destructive_retain",
            "destructive_general_gen_high"} <= set(t.columns)
    html = (out / "report.html").read_text()
    assert "Summary table: generation" in html and html.count("data:image/png;base64") >= 5 and "class='pair'" in html
    assert "The dilemma frontier" in html and (out / "figures" / "frontier_attention.png").exists()
    front = json.loads((out / "checkpoints" / "ga_gdr.frontier.json").read_text())
    trained = json.loads((out / "checkpoints" / "ga_gdr" / "unpact.json").read_text())["steps"]
    expect = [s for s in range(1, trained + 1) if s % 2 == 0] + ([trained] if trained % 2 else [])
    assert [p["strength"] for p in front if p["route"] == "attention"] == [float(s) for s in expect]  # + the last
    assert (out / "ga_gdr" / "patch_positions.csv").exists() and not (out / "rmu" / "patch_positions.csv").exists()
    assert "How superficial is the forgetting" in html
    routes = pd.read_csv(out / "rmu" / "recovery_routes.csv")
    assert {"emphasis", "quantize", "relearn", "in_context"} == set(routes.route)
    assert {"recovered_k", "control_k", "excess_low", "base_kept"} <= set(routes.columns)
    first = json.loads((out / "rmu" / "result.json").read_text())
    # resume: a rerun reuses checkpoints and per-method results (file untouched)
    mtime = (out / "rmu" / "result.json").stat().st_mtime_ns
    t2 = run_demo(str(tiny_llama_dir), ["ga_gdr", "rmu"], out, steps=2, target=0.0, probes=demo_probes(), known_only=False)
    assert (out / "rmu" / "result.json").stat().st_mtime_ns == mtime
    assert t2.equals(t) and first["method"] == "rmu"
    assert not list(out.rglob("*.tmp"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEED_BROWSER = os.environ.get("UNPACT_BROWSER_TESTS") == "1"  # set by .ci/run, which installs Debian's chromium


@pytest.mark.skipif(not NEED_BROWSER and not CHROMIUM, reason="no chromium here (CI installs it and runs this)")
def test_report_in_a_real_browser(demo_out):
    """Headless Debian Chromium, driven by Playwright with ``executable_path`` (its own download cannot reach the
    internet): no page-wide horizontal scroll at 900 and 1400 px, every image decoded, every table-of-contents link
    resolves to a section, and the key-results box is there and holds verdicts."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "UNPACT_BROWSER_TESTS=1 but no chromium: apt-get install chromium"
    page_url = (demo_out[0] / "report.html").resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width in (900, 1400):
                page = browser.new_page(viewport={"width": width, "height": 1000})
                page.goto(page_url)
                over = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert over <= 0, f"the page scrolls sideways by {over} px at {width} px"
                images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
                assert len(images) >= 5 and all(ok and w > 0 for ok, w in images), images
                links = page.evaluate("[...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))")
                missing = page.evaluate("hrefs => hrefs.filter(h => !document.getElementById(h.slice(1)))", links)
                assert len(links) >= 8 and not missing, missing
                box = page.query_selector("#key-results-box")
                assert box is not None and box.is_visible() and len(box.query_selector_all("li")) >= 3
                page.close()
        finally:
            browser.close()
