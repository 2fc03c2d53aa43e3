"""The report's figures, captions and token strips against independent computations: formulas written out,
naive loops over the plotted data, and the numbers matplotlib actually drew."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unpact_mech.core.display import colour_legend, comparison_block, strip_scale, token_label, token_row
from unpact_mech.core.stats import draw_mean_rate
from unpact_mech.report.figures import (
    factor_curves,
    frontier,
    grid_limit,
    head_heatmap,
    interval_points,
    logit_lens_curves,
)
from unpact_mech.report.verdicts import (
    control_caption,
    factor_caption,
    focus_caption,
    frontier_caption,
    heads_caption,
    lens_caption,
    patch_caption,
    word_kind_caption,
)


def _wilson_upper(k: float, n: int, z: float = 1.96) -> float:
    """Wilson's upper bound, written out: (p + z^2/2n + z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_random_control_interval_does_not_collapse_at_zero():
    """0/11 over every draw: the bootstrap alone gives 0.00-0.00; the control's interval is Wilson's 0.00-0.26."""
    r = draw_mean_rate([0.0] * 11)
    assert r["k"] == 0 and r["n"] == 11 and r["rate"] == 0 and r["low"] == 0
    assert r["high"] == pytest.approx(_wilson_upper(0, 11)) and round(r["high"], 2) == 0.26
    r = draw_mean_rate([1.0] * 5)  # n/n: Wilson's lower bound, by symmetry 1 - upper(0, n)
    assert r["high"] == 1 and r["low"] == pytest.approx(1 - _wilson_upper(0, 5))


def test_random_control_interval_covers_the_bootstrap():
    shares = [0.0, 0.5, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0]
    r = draw_mean_rate(shares, seed=3)
    rng = np.random.default_rng(3)
    means = np.asarray(shares)[rng.integers(0, len(shares), (10_000, len(shares)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert r["rate"] == pytest.approx(np.mean(shares)) and r["k"] == pytest.approx(3.0)
    assert r["low"] <= lo + 1e-12 and r["high"] >= hi - 1e-12
    assert r["high"] >= _wilson_upper(3.0, 8) - 1e-12
    assert math.isnan(draw_mean_rate([])["rate"]) and draw_mean_rate([])["n"] == 0


def test_token_labels_show_whitespace():
    assert token_label("\n") == "\u23ce" and token_label("\n\n") == "\u23ce\u23ce" and token_label("") == "\u2205"
    assert token_label(" Paris") == " Paris" and token_label("\t") == "\u21e5" and token_label("\x01") == "\\x01"
    row = token_row(["a", "\n"], [0.5, float("nan")], set(), 1.0)
    assert "\u23ce</span>" in row and "&nbsp;" not in row


def test_token_strips_share_one_scale():
    """A contribution of 1 on a shared scale of 2 is half-intensity red: rgb(255, 127, 127)."""
    a = comparison_block("p", ["x"], [1.0], [0.5], set(), scale=2.0)
    assert "background:rgb(255,127,127)" in a
    assert strip_scale([0.1, None, float("nan")], [-3.0]) == 3.0 and strip_scale([], [0.0]) == 1.0
    assert "+2.00" in colour_legend(2.0) and "-2.00" in colour_legend(2.0) and "KeyToken" in colour_legend(2.0)


def _heads(scale: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"split": "forget", "layer": la, "head": h, "change": scale * rng.normal()} for la in range(3) for h in range(2)
            for _ in range(2)]
    return pd.DataFrame(rows)


def test_head_heatmaps_share_a_colour_scale():
    a, b = _heads(0.2, 0), _heads(0.6, 1)
    naive = max(abs(g.change.mean()) for df in (a, b) for _, g in df.groupby(["layer", "head"]))
    lim = grid_limit([a, b], split="forget")
    assert lim == pytest.approx(naive)
    for df in (a, b):
        fig = head_heatmap(df, vlim=lim)
        assert fig.axes[0].collections[0].get_clim() == pytest.approx((-lim, lim))
    top = a.groupby(["layer", "head"]).change.mean().abs().idxmax()
    assert f"L{top[0]}.H{top[1]} " in heads_caption(a, lim).split("Largest |change|: ")[1].split(",")[0]
    assert f"+/-{lim:.2f}" in heads_caption(a, lim)


def _lens() -> pd.DataFrame:
    rows = []
    for pid in ("p1", "p2"):
        for layer in range(9):
            base = -100.0 if layer == 0 else -layer * 0.5
            rows += [{"probe_id": pid, "model": "base", "layer": layer, "score": base},
                     {"probe_id": pid, "model": "unl", "layer": layer,
                      "score": base - (2.0 if layer == 6 else 0.5) * (1 if pid == "p1" else 3)}]
    return pd.DataFrame(rows)


def test_logit_lens_shows_late_layers_and_the_paired_difference():
    lens = _lens()
    fig = logit_lens_curves(lens)
    a, b = fig.axes[0], fig.axes[1]
    xs = [x for line in a.get_lines() for x in line.get_xdata()]
    assert min(xs) == 3  # 9 layers: from a third of the way in; layer 0's -100 is left out of panel (a)
    assert a.get_ylim()[0] > -50
    diff = b.get_lines()[0]
    # per layer: mean over probes of unlearned - base, by hand: -0.5*(1+3)/2 = -1, layer 6: -2*(1+3)/2 = -4
    assert list(diff.get_xdata()) == list(range(9))
    assert list(diff.get_ydata()) == pytest.approx([-4.0 if la == 6 else -1.0 for la in range(9)])
    cap = lens_caption(lens)
    assert "lowest at layer 6 (-4.00)" in cap and "reads -1.00 after the last layer" in cap


def _rates() -> pd.DataFrame:
    rows = []
    for m, ks in (("a", (1, 3)), ("b", (1, 3))):  # a and b identical: neither may hide the other
        for f, k in zip((2.0, 8.0), ks):
            for cond, kk in (("keytokens", k), ("random", 0)):
                rows.append({"method": m, "route": "embed", "condition": cond, "factor": f, "k": kk, "n": 10,
                             "rate": kk / 10, "low": max(0.0, kk / 10 - 0.1), "high": kk / 10 + 0.2})
    return pd.DataFrame(rows)


def test_factor_curves_dodge_and_draw_intervals():
    fig = factor_curves(_rates())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    series = [c for c in ax.containers]  # one errorbar container per method
    xs = [tuple(c.lines[0].get_xdata()) for c in series]
    assert len(xs) == 2 and xs[0] != xs[1]  # dodged along the factor axis
    assert all(abs(math.log2(x) - math.log2(f)) < 0.1 for x, f in zip(xs[0], (2.0, 8.0)))
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else \
        [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "a (n=10)" in labels and "random-token control" in labels
    cap = factor_caption(_rates())
    assert "peaks at 0.30 (3/10) for a, embed x8; the random control there reads 0.00" in cap


def test_frontier_axes_fit_the_data_and_points_are_labelled():
    df = pd.DataFrame({"method": ["m"] * 3, "strength": [2.0, 4.0, 5.0], "destructive": [0.1, 0.2, 0.3],
                       "destructive_low": [0.0, 0.1, 0.15], "destructive_high": [0.3, 0.35, 0.4],
                       "keytokens": [0.2, 0.1, 0.0], "keytokens_low": [0.05, 0.0, 0.0],
                       "keytokens_high": [0.45, 0.3, 0.2], "random": [0.1, 0.0, 0.0]})
    fig = frontier(df)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] == pytest.approx(1.1 * 0.4) and ax.get_ylim()[1] == pytest.approx(1.1 * 0.45)
    assert [t.get_text() for t in ax.texts] == ["2", "4", "5"]
    cap = frontier_caption(df.assign(random=[0.1, 0.0, 0.05]))
    assert "destructive rate runs 0.30 (m) to 0.30 (m)" in cap and "random control 0.05 (m)" in cap


def test_interval_points_axis_and_legend_outside():
    df = pd.DataFrame({"m": ["a", "a"], "when": ["before", "after"], "v": [0.8, 0.6], "lo": [0.7, 0.5], "hi": [0.9, 0.7]})
    fig = interval_points(df, "m", "v", "lo", "hi", "when", ylim=(0.0, 1.0))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    leg = ax.get_legend().get_window_extent()
    assert leg.x0 >= ax.get_window_extent().x1  # right of the axes: it covers no error bar


def _row(m, b, a):
    return {"method": m, "focus_before": b, "focus_before_low": b - 0.05, "focus_before_high": b + 0.05,
            "focus_after": a, "focus_after_low": a - 0.05, "focus_after_high": a + 0.05}


def test_captions_change_with_the_numbers():
    assert "Falls for none; rises for none; no clear change (intervals overlap) for 2 of 2" in \
        focus_caption([_row("a", 0.6, 0.58), _row("b", 0.6, 0.6)])
    assert "Falls for a; rises for b; no clear change (intervals overlap) for 0 of 2" in \
        focus_caption([_row("a", 0.6, 0.3), _row("b", 0.3, 0.6)])
    r = {"method": "a", "recovery_embed": 0.2, "recovery_embed_k": 2, "recovery_embed_n": 10,
         "recovery_embed_random": 0.1, "specific_embed": 0.1, "specific_embed_low": 0.02, "specific_embed_high": 0.3}
    cap = control_caption([r], "embed")
    assert "a under teacher_forced: 0.20 (2/10; random control 0.10)" in cap and "in 1 of 1 method" in cap
    assert "in 0 of 1 method" in control_caption([{**r, "specific_embed_low": -0.1}], "embed")
    t = pd.DataFrame({"method": ["a", "b"], "kind": ["function word"] * 2, "change": [-0.2, 0.1],
                      "low": [-0.3, -0.1], "high": [-0.1, 0.2]})
    assert "wholly below 0, per word kind: function word: a." in word_kind_caption(t)
    assert "function word: none." in word_kind_caption(t.assign(high=[0.1, 0.2]))
    patch = pd.DataFrame({"kind": "resid_pre", "layer": [0, 3, 3], "position": [1, 1, 2], "token": ["x", "x", "y"],
                          "restoration": [0.1, 0.2, 0.7]})
    assert "layer 3, token 'y' (0.70)" in patch_caption(patch)


def test_destruction_and_eligibility_carry_each_criterion_evidence(tiny_llama, tiny_probes):
    """The drill-down's generated answers are the criterion's own: generation_table called directly agrees."""
    from unpact_mech.evals.criteria import generation_table
    from unpact_mech.findings import destruction, recovery
    from unpact_mech.probes import tokenize_probes

    tab, _ = destruction(tiny_llama, tiny_llama, tiny_probes[:3], fmt="plain", criterion="generation")
    direct = generation_table(tiny_llama, tokenize_probes(tiny_llama, tiny_probes[:3], "plain"))
    assert list(tab.generated_base) == list(direct.generated) == list(tab.generated_unlearned)
    tf, _ = destruction(tiny_llama, tiny_llama, tiny_probes[:3], fmt="plain")
    assert {"lp_base", "lp_unlearned"} <= set(tf.columns)
    res = recovery(tiny_llama, tiny_llama, tiny_probes[:2], (1.0, 2.0), modes=("embed",), prompt_styles=(),
                   fmt="plain", eligible_only=False, n_draws=1)
    gen = res.eligibility[res.eligibility.criterion == "generation"]
    assert list(gen.generated_base) == list(direct.generated[:2])
