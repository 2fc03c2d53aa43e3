"""Rich notebook displays: the HTML of results holds the tokens and their scores (checked on a tiny model)."""

from html import escape

from unpact_mech.analysis import Analysis
from unpact_mech.analysis.compare import compare
from unpact_mech.findings import recovery
from unpact_mech.probes import tokenize_probes


def _scores_in(html, result):
    return all(f"{c:+.2f}" in html for c in result.contributions.tolist())


def test_loo_result_html(tiny_llama, tiny_probes):
    an = Analysis(tiny_llama, tiny_probes[:2], fmt="plain")
    assert "call .loo()" in an._repr_html_()
    r = an.loo()[0]
    html = r._repr_html_()
    tp = tokenize_probes(tiny_llama, tiny_probes[:1], "plain")[0]
    assert all(escape(tp.tokens[p].strip()) in html for p in tp.attributable)
    assert _scores_in(html, r) and f"LP = {r.lp:.3f}" in html and "font-size:15px" in html
    assert html.count("class=\"cell key\"") == len(an.keytokens()[0])
    ah = an._repr_html_()
    assert "2 probes attributed so far" in ah and _scores_in(ah, an.loo()[1])


def test_comparison_and_recovery_html(tiny_llama, tiny_probes):
    cmp = compare(tiny_llama, tiny_llama, tiny_probes[:2], fmt="plain")
    html = cmp._repr_html_()
    assert "Comparison</b> of 2 probes" in html and _scores_in(html, cmp.base[1]) and "mean keytoken jaccard" in html
    res = recovery(tiny_llama, tiny_llama, tiny_probes[:1], factors=(1.0, 2.0), modes=("attention",),
                   prompt_styles=(), criteria=("teacher_forced",), n_draws=1, fmt="plain")
    assert "KeyTokens minus random" in res._repr_html_()
