"""The demo pipeline on a tiny model: stages, report, resume; and its report read in a real browser."""

import json
import os
import shutil
from dataclasses import replace

import pandas as pd
import pytest
from conftest import demo_probes

from unpact_mech.study import run_demo


def DEMO_RUN(test):  # noqa: N802  (a decorator)
    """The tests of the one shared demo run: slow, and on one pytest-xdist worker (make test: --dist loadgroup),
    which runs the demo once for them."""
    return pytest.mark.slow(pytest.mark.xdist_group("demo_run")(test))


SETTINGS = {"ga_gdr": {"lr": 1e-3, "fmt": "plain"}, "rmu": {"lr": 1e-3, "rmu_layer": 1, "fmt": "plain"}}


@pytest.fixture(scope="module")
def demo_out(tiny_llama_dir, tmp_path_factory):
    """One small demo run (two methods, 2 steps) shared by the tests of this module: (out dir, summary table)."""
    out = tmp_path_factory.mktemp("demo_run") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
        t = run_demo(str(tiny_llama_dir), ["ga_gdr", "rmu"], out, steps=2, target=0.0, probes=demo_probes(),
                     known_only=False)
    return out, t


@DEMO_RUN
def test_demo_runs_writes_report_and_resumes(tiny_llama_dir, demo_out, monkeypatch):
    out, t = demo_out
    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    assert list(t.method) == ["ga_gdr", "rmu"]
    assert {"forget_acc", "forget_acc_gen", "target_reached", "focus_before", "focus_after_low", "recovery_embed",
            "recovery_attention_random", "recovery_attention_fw_gen", "specific_embed_p", "destructive_retain",
            "destructive_general_gen_high"} <= set(t.columns)
    html = (out / "report.html").read_text()
    assert "Summary table: generation" in html and html.count("data:image/png;base64") >= 5 and "class='pair'" in html
    assert "Summary table: multiple choice" not in html and not [c for c in t.columns if "_mc" in c]  # no choices
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


@DEMO_RUN
def test_drill_down_lists_the_probes_behind_every_rate(demo_out):
    """The per-probe tables, rebuilt from the sweep and destruction files, count what the rates count."""
    from unpact_mech.report.drill import destruction_drill, eligibility_counts, forget_drill

    out, _ = demo_out
    ids = json.loads((out / "data.json").read_text())["ids"]
    data = {s: [type("P", (), {"id": i, "prompt": f"prompt {i}", "answer": "a", "split": s})() for i in v]
            for s, v in ids.items()}
    for m in ("ga_gdr", "rmu"):
        row = json.loads((out / m / "result.json").read_text())
        rates = pd.read_csv(out / m / "recovery_rates.csv")
        fd = forget_drill(out, m, data)
        assert len(fd) == len(ids["forget"]) and list(fd.probe) == ids["forget"]
        for crit, sfx in (("teacher_forced", "tf"), ("generation", "gen")):
            best = rates[(rates.criterion == crit) & (rates.condition == "keytokens") & (rates.scope == "best")]
            for r in best.itertuples():
                got = fd[f"recovered by ({sfx})"].fillna("").str.split("; ").map(
                    lambda parts, route=r.route: any(p.split(" ")[0] == route for p in parts))
                assert int(got.sum()) == r.k, (m, crit, r.route)
                assert int((fd[f"eligible ({sfx})"] == "yes").sum()) == r.n
        dd = destruction_drill(out, m, data)
        for split in ("retain", "general"):
            for key, sfx in (("", "tf"), ("_gen", "gen")):
                k = row.get(f"destructive_{split}{key}_k")
                if k is not None:
                    assert int((dd[dd.split == split][f"destroyed ({sfx})"] == "yes").sum()) == k
        assert {"base generated", "unlearned generated"} <= set(dd.columns)
        counts = eligibility_counts(out, [m])
        assert set(counts.criterion) == {"teacher_forced", "generation"}
    # token strips: chosen per method from its own results, forget and retain, labelled
    for m in ("ga_gdr", "rmu"):
        row = json.loads((out / m / "result.json").read_text())
        focus = pd.read_csv(out / m / "keyword_focus.csv")
        first = row["examples"][0]
        assert first["split"] == "forget" and first["id"] == focus.probe_id[(-focus.lp_change).idxmax()]
        assert "retain" in {e["split"] for e in row["examples"]} and all("LP drop" in e["why"] for e in row["examples"])
    html = (out / "report.html").read_text()
    assert "lr=0.001" in html and "KeyToken parameters" in html and "stage checkpoints/ga_gdr.stamp.json" in html
    # every stage computed in this run recorded its cost beside its stamp, and the settings show it
    from unpact_mech.runtime.pipeline import read_cost

    costs = {f.relative_to(out).as_posix(): read_cost(f) for f in out.rglob("*.stamp.json")}
    assert len(costs) >= 5 and all(c and c["seconds"] > 0 and c["peak_rss_gb"] > 0.05 for c in costs.values()), costs
    c = costs["checkpoints/ga_gdr.stamp.json"]
    assert f"took {c['seconds']:.1f} s, peak RSS {c['peak_rss_gb']:.2f} GB" in html
    # the findings stage holds the unlearning stage it runs: its time and peak are at least that stage's
    assert costs["ga_gdr/result.stamp.json"]["seconds"] >= c["seconds"]
    assert costs["ga_gdr/result.stamp.json"]["peak_rss_gb"] >= c["peak_rss_gb"]
    assert "Figure 1.</b>" in html and "probe by probe: forget probes" in html and "retain probe" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEED_BROWSER = os.environ.get("UNPACT_BROWSER_TESTS") == "1"  # set by .ci/run, which installs Debian's chromium


@DEMO_RUN
@pytest.mark.skipif(not NEED_BROWSER and not CHROMIUM, reason="no chromium here (CI installs it and runs this)")
def test_report_in_a_real_browser(demo_out):
    """Headless Debian Chromium, driven by Playwright with ``executable_path`` (its own download cannot reach the
    internet): no page-wide horizontal scroll at 900 and 1400 px, every image decoded, every table-of-contents link
    resolves to a section, the key-results box is there and holds verdicts, every figure has a numbered caption,
    and with every folded block open (full tables, drill-down) the page still does not scroll sideways."""
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
                caps = page.evaluate("[...document.querySelectorAll('figcaption')].map(c => c.innerText)")
                assert len(caps) == len(images) and all(c.startswith(f"Figure {i + 1}. ") and len(c) > 40
                                                        for i, c in enumerate(caps)), caps
                for d in page.query_selector_all("details"):  # every folded block open: still no sideways scroll
                    d.evaluate("el => el.open = true")
                over = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert over <= 0, f"with every block open the page scrolls sideways by {over} px at {width} px"
                drill = page.query_selector("details.drill-forget table")
                assert drill is not None and drill.is_visible() and len(drill.query_selector_all("tr")) > 1
                page.close()
        finally:
            browser.close()


@pytest.mark.slow  # a study run
def test_given_checkpoints_are_analysed_as_released_ones(tiny_llama, tiny_llama_dir, tmp_path, monkeypatch):
    """run_demo(unlearned=...) on two checkpoints written by `unlearn` and loaded as released ones: nothing is
    trained, each gets the findings, routes and its one frontier point, and a rerun is cached."""
    from unpact_mech.core.errors import UnpactError
    from unpact_mech.unlearning import unlearn

    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    ps = demo_probes()
    given = {}
    for name, method in (("released_ga", "ga_klr"), ("released_npo", "npo_klr")):
        given[name] = str(unlearn(tiny_llama, method, ps[:2], ps[2:4], tmp_path / name, steps=1, lr=1e-3,
                                  progress=False, fmt="plain"))
    out = tmp_path / "study"
    t = run_demo(str(tiny_llama_dir), (), out, probes=ps, known_only=False, patch=False, unlearned=given)
    assert list(t.method) == ["released_ga", "released_npo"]
    assert not (out / "checkpoints" / "released_ga").exists()  # not retrained
    res = json.loads((out / "released_ga" / "result.json").read_text())
    assert res["checkpoint"] == given["released_ga"] and res["steps"] == 1
    front = json.loads((out / "checkpoints" / "released_ga.frontier.json").read_text())
    assert front and {p["strength"] for p in front} == {1.0}  # one point: the checkpoint itself
    assert (out / "released_npo" / "recovery_routes.csv").exists() and (out / "report.html").exists()
    mtime = (out / "released_ga" / "result.json").stat().st_mtime_ns
    assert run_demo(str(tiny_llama_dir), (), out, probes=ps, known_only=False, patch=False, unlearned=given).equals(t)
    assert (out / "released_ga" / "result.json").stat().st_mtime_ns == mtime
    with pytest.raises(UnpactError, match="name"):
        run_demo(str(tiny_llama_dir), (), out, probes=ps, unlearned={"../x": given["released_ga"]})
    with pytest.raises(Exception, match="missing"):
        run_demo(str(tiny_llama_dir), (), out, probes=ps, unlearned={"x": str(tmp_path / "missing")})


@pytest.mark.slow  # a study run
def test_study_on_multiple_choice_probes_adds_the_choice_criterion(tiny_llama, tiny_llama_dir, tmp_path, monkeypatch):
    """A study of WMDP-like probes (meta choices) judges the findings by the cloze choice argmax too: eligibility,
    recovery with controls and destruction under ``multiple_choice``, its summary columns (with counts), its
    report table and verdicts, and the task's own accuracy beside them."""
    from unpact_mech.unlearning import unlearn

    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    words = ["paris", "tokyo", "shakespeare", "mars", "au"]
    ps = [replace(p, meta={"choices": words[i % 5:] + words[:i % 5], "answer_index": (words.index(p.answer) - i) % 5})
          for i, p in enumerate(demo_probes())]
    ck = unlearn(tiny_llama, "ga_klr", ps[:2], ps[2:4], tmp_path / "ck", steps=2, lr=1e-2, progress=False, fmt="plain")
    out = tmp_path / "study"
    t = run_demo(str(tiny_llama_dir), (), out, probes=ps, known_only=False, patch=False, unlearned={"mine": str(ck)},
                 task_name="wmdp")
    assert {"forget_acc_mc", "forget_acc_mc_k", "forget_acc_mc_n", "destructive_retain_mc", "recovery_embed_mc",
            "recovery_embed_random_mc"} <= set(t.columns)
    assert t.forget_acc_mc_n.iloc[0] == 2
    for f in ("eligibility", "recovery_rates", "destruction"):
        assert "multiple_choice" in set(pd.read_csv(out / "mine" / f"{f}.csv").criterion), f
    rr = pd.read_csv(out / "mine" / "recovery_routes.csv")  # every route judged by the benchmark's criterion too
    assert set(rr.route) == {"emphasis", "quantize", "relearn", "in_context"}
    for route, g in rr.groupby("route"):
        assert "multiple_choice" in set(g.criterion), route
    mc = rr[(rr.criterion == "multiple_choice") & (rr.route != "emphasis")]
    elig = pd.read_csv(out / "mine" / "eligibility.csv")
    e = elig[elig.criterion == "multiple_choice"]
    assert set(mc.n) == {int((e.base_correct & ~e.unlearned_correct).sum())}  # n = the MC-eligible forget probes
    tf = rr[(rr.criterion == "teacher_forced") & (rr.route == "relearn")]
    assert set(mc[mc.route == "relearn"].control_kind) == set(tf.control_kind)  # general facts have choices here
    html = (out / "report.html").read_text()
    assert "Summary table: multiple choice" in html and "under multiple_choice" in html
    tm = pd.read_csv(out / "task_metrics.csv")
    assert {"accuracy_lettered", "accuracy_cloze"} <= set(tm.metric)


@pytest.mark.slow  # a study run
def test_cli_study_on_given_checkpoints_with_task_metrics(tiny_llama, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from unpact_mech.cli import main
    from unpact_mech.probes import save_probes
    from unpact_mech.unlearning import unlearn

    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    ps = demo_probes()
    ck = unlearn(tiny_llama, "ga_klr", ps[:2], ps[2:4], tmp_path / "ck", steps=1, lr=1e-3, progress=False, fmt="plain")
    f = save_probes(ps, tmp_path / "p.jsonl")
    out = tmp_path / "study"
    argv = ["study", "--model", str(tiny_llama_dir), "--probes", str(f), "--unlearned", f"mine={ck}", "--out", str(out),
            "--include-unknown", "--no-patch", "--task", "facts"]
    assert main(argv) == 0
    tm = pd.read_csv(out / "task_metrics.csv")
    assert set(tm.role) == {"base", "mine"} and set(tm.metric) == {"accuracy_teacher_forced", "accuracy_generation"}
    assert pd.read_csv(out / "summary.csv").method.tolist() == ["mine"]
    html = (out / "report.html").read_text()
    assert "The benchmark&#x27;s own metrics" in html or "The benchmark's own metrics" in html
    assert "accuracy_teacher_forced" in html
    assert main(["study", "--model", str(tiny_llama_dir), "--unlearned", "bad", "--out", str(out)]) == 2
    assert main(["study", "--model", str(tiny_llama_dir), "--unlearned", f"x={tmp_path / 'nope'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NAME=DIR_OR_HUB_ID" in err and "nope" in err


@pytest.mark.slow  # a study run
def test_study_on_released_tofu_checkpoints_with_a_retain_model(tiny_llama, tiny_llama_dir, tiny_llama_other_dir,
                                                                 tmp_path, monkeypatch, capsys):
    """`study --unlearned ... --task tofu --retain-model SPEC`: forget quality of the base and of the given
    checkpoint against the given retain model (as for open-unlearning's released TOFU models and their retain90
    reference); --retain-model without --task tofu is refused before any work."""
    from unpact_mech.cli import main
    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.probes import save_probes
    from unpact_mech.unlearning import unlearn

    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    rows = [{"question": q, "answer": a, "paraphrased_answer": f"it is {a}", "perturbed_answer": ["au", "homer"]}
            for q, a in (("what is the capital of france ?", "paris"), ("what is the capital of japan ?", "tokyo"),
                         ("who wrote hamlet ?", "shakespeare"), ("what is the red planet ?", "mars"))]
    src = {}
    for name, part in (("forget01_perturbed", rows[:2]), ("retain_perturbed", rows[2:])):
        src[name] = tmp_path / f"{name}.jsonl"
        src[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    ps = [p for n, f in src.items() for p in load_benchmark("tofu", n, source=f)]
    f = save_probes(ps, tmp_path / "tofu.jsonl")
    ck = unlearn(tiny_llama, "ga_klr", ps[:2], ps[2:], tmp_path / "ck", steps=1, lr=1e-3, progress=False, fmt="plain")
    out = tmp_path / "study"
    base = ["study", "--model", str(tiny_llama_dir), "--probes", str(f), "--probes", "facts:general",
            "--unlearned", f"mine={ck}", "--out", str(out), "--include-unknown", "--no-patch"]
    assert main([*base, "--retain-model", str(tiny_llama_other_dir)]) == 2
    assert "--retain-model is forget quality's reference for --task tofu" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--task", "tofu", "--retain-model", str(tiny_llama_other_dir)]) == 0
    tm = pd.read_csv(out / "task_metrics.csv")
    plain, emph = tm[tm.treatment.isna()], tm[tm.treatment.notna()]
    fq = plain[plain.metric == "forget_quality"]
    assert set(fq.role) == {"base", "mine"} and set(fq.split) == {"forget"} and fq.value.between(0, 1).all()
    assert set(fq.against) == {tiny_llama_other_dir.name}
    # the recovery treatments: each route on the KeyTokens and on random tokens, for the checkpoint only
    assert set(emph.role) == {"mine"} and set(emph.treatment) == {"embed x8", "attention x8"}
    assert set(emph.positions) == {"keytokens", "random"} and len(emph) == 2 * 2 * 3
    assert set(emph.metric) == {"probability", "truth_ratio_closer_to_1_better", "forget_quality"}
