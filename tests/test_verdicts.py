"""Verdict rules against synthetic results with known answers, and the report's contents and anchors."""

from __future__ import annotations

import re

import pandas as pd

from unpact_mech.report.html import anchor, write_report
from unpact_mech.report.verdicts import (
    destruction_verdicts,
    focus_verdicts,
    recovery_verdicts,
    route_verdicts,
    verdicts,
)


def _row(**kw):
    base = {"method": "m", "focus_before": 0.6, "focus_before_low": 0.5, "focus_before_high": 0.7,
            "focus_after": 0.55, "focus_after_low": 0.45, "focus_after_high": 0.65,
            "specific_attention": 0.05, "specific_attention_low": -0.1, "specific_attention_high": 0.2,
            "destructive_retain_gen": 0.25, "destructive_retain_gen_k": 2, "destructive_retain_gen_n": 8,
            "destructive_retain_gen_low": 0.0, "destructive_retain_gen_high": 0.6}
    return {**base, **kw}


def test_focus_rule():
    assert not focus_verdicts([_row()])[0].positive  # overlapping intervals: no clear change
    v = focus_verdicts([_row(focus_after=0.3, focus_after_low=0.2, focus_after_high=0.4)])[0]
    assert v.positive and "falls" in v.text and "0.30 (0.20 to 0.40) after" in v.text
    assert "rises" in focus_verdicts([_row(focus_after=0.9, focus_after_low=0.8, focus_after_high=0.95)])[0].text


def test_recovery_rule_null_then_positive_then_negative():
    null = recovery_verdicts([_row()])
    assert len(null) == 1 and not null[0].positive
    assert null[0].text.startswith("No emphasis mode is KeyToken-specific: of 1 paired")
    pos = recovery_verdicts([_row(specific_attention=0.3, specific_attention_low=0.1, specific_attention_high=0.5)])
    assert [v.positive for v in pos] == [False, True]
    assert pos[0].text.startswith("1 of 1 paired KeyTokens-minus-random intervals lie above 0; with no effect "
                                  "anywhere, about 0.0 would by chance")
    assert pos[1].text == ("m: emphasis by attention is KeyToken-specific under teacher_forced: KeyTokens - random "
                           "+0.30 (+0.10 to +0.50)")
    neg = recovery_verdicts([_row(specific_attention=-0.3, specific_attention_low=-0.5, specific_attention_high=-0.1)])
    assert "worse than random tokens" in neg[-1].text and not any(v.positive for v in neg)
    # a generation-criterion column is read under its own suffix
    gen = recovery_verdicts([_row(specific_embed_gen=0.4, specific_embed_gen_low=0.2, specific_embed_gen_high=0.6)])
    assert any(v.positive and "embed" in v.text and "generation" in v.text for v in gen)


def test_destruction_rule_counts_and_all():
    v = destruction_verdicts([_row()])[0]
    assert not v.positive and "2/8" in v.text and "includes 0" in v.text
    v = destruction_verdicts([_row(destructive_retain_gen=1.0, destructive_retain_gen_k=8,
                                   destructive_retain_gen_low=0.68)])[0]
    assert v.positive and v.text.startswith("m destroys all retain facts under generation (rate 1.00, 8/8")
    v = destruction_verdicts([_row(destructive_retain_gen_k=3, destructive_retain_gen_low=0.1)])[0]
    assert "destroys 3/8 retain facts" in v.text


def test_untestable_findings_say_so():
    row = {"method": "m", "destructive_retain": None, "destructive_retain_k": 0, "destructive_retain_n": 0}
    v = destruction_verdicts([row])
    assert len(v) == 1 and "not measurable" in v[0].text and "m retain/teacher_forced" in v[0].text
    v = recovery_verdicts([{"method": "m", "specific_embed": None}])
    assert len(v) == 1 and v[0].text.startswith("Recovery could not be tested")


def test_route_rule():
    t = pd.DataFrame({"method": ["m", "m"], "route": ["relearn", "quantize"], "treatment": ["k=4", "4-bit"],
                      "criterion": ["generation", "teacher_forced"], "excess": [0.36, 0.0],
                      "excess_low": [0.07, -0.2], "excess_high": [0.65, 0.2]})
    v = route_verdicts(t)
    assert len(v) == 2 and v[1].positive and "relearn (k=4, generation) recovers beyond its control: excess " \
        "+0.36 (+0.07 to +0.65)" in v[1].text and v[0].text.startswith("1 of 2 route treatments")
    t.loc[0, "excess_low"] = -0.01
    assert route_verdicts(t)[0].text.startswith("No recovery route recovers beyond its control: all 2")


def test_verdicts_are_computed_not_written(tmp_path):
    """Changing a number changes the text: nothing in the box is fixed."""
    a = [v.text for v in verdicts([_row()])]
    b = [v.text for v in verdicts([_row(focus_before=0.61, destructive_retain_gen_k=3)])]
    assert a != b and len(a) == len(b)


def test_report_has_a_table_of_contents_whose_links_resolve(tmp_path):
    taken: set[str] = set()
    assert [anchor(h, taken) for h in ("Key results", "Key results", "ga_klr: heads", "!!")] == \
        ["key-results", "key-results-2", "ga-klr-heads", "section"]
    page = write_report(tmp_path / "r.html", "t", [("Key results", "<p>x</p>"), ("Finding 1", pd.DataFrame({"a": [1]})),
                                                   ("Finding 1", "<p>y</p>")]).read_text()
    links = re.findall(r"href='#([^']+)'", page)
    ids = re.findall(r"id='([^']+)'", page)
    assert links == ["key-results", "finding-1", "finding-1-2"] and set(links) <= set(ids)


def test_rates_are_rounded_once():
    """0.5/11 = 0.04545...: shown as 0.05 everywhere (rounding to 3 places first would show 0.04)."""
    from unpact_mech.report.tables import format_rates

    t = pd.DataFrame({"recovery": [0.5 / 11], "recovery_k": [0.5], "recovery_n": [11], "recovery_low": [0.0],
                      "recovery_high": [0.3], "steps": [3.14159]})
    out = format_rates(t).round(3)
    assert out.recovery[0] == "0.05 (0.5/11, 0.00-0.30)" and out.steps[0] == 3.142


def test_headline_table_takes_the_best_specific_recovery():
    from unpact_mech.report.tables import headline_table

    row = {**_row(), "steps": 3, "forget_acc": 0.25, "forget_acc_k": 3, "forget_acc_n": 12, "forget_acc_low": 0.09,
           "forget_acc_high": 0.53, "specific_embed": 0.2, "specific_embed_low": 0.01, "specific_embed_high": 0.4}
    t = headline_table([row])
    assert t["forget acc (teacher forced)"][0] == "0.25 (3/12, 0.09-0.53)"
    assert t["best specific recovery"][0] == "+0.20 (+0.01 to +0.40)" and t["route, criterion"][0] == "embed, teacher_forced"
    assert headline_table([{"method": "m"}])["route, criterion"][0] == "no eligible probes"


def test_every_null_says_what_it_could_have_detected():
    """The null verdicts carry the minimum detectable effect at their n, from unpact_mech.findings.power."""
    from unpact_mech.findings.power import destruction_mde, specific_mde

    row = _row(recovery_attention_n=11, recovery_attention_random=0.05)
    v = recovery_verdicts([row], n_draws=2)[0]
    assert f"{specific_mde(11, 0.05, 2):.2f} (n = 11) with 80% power" in v.text and "rate 0.05 with 2 draws" in v.text
    v2 = recovery_verdicts([_row(recovery_attention_n=6, recovery_attention_random=0.05)])[0]
    assert v2.text != v.text and f"{specific_mde(6, 0.05, 2):.2f} (n = 6)" in v2.text
    d = destruction_verdicts([_row()])[0]
    assert f"at n = 8 a destructive rate of {destruction_mde(8):.2f} would be found with 80% power" in d.text
