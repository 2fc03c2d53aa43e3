"""HTML displays from tokens and numbers: token heatmaps (base vs unlearned), notebook displays of result
objects (``_repr_html_``), attention heatmaps. Pure string building; the report (``unpact_mech.report``) and the
result objects of every layer use it."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;max-width:9em;overflow-wrap:break-word}
th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.tok{display:inline-block;padding:2px 3px;margin:1px;border-radius:3px;font-family:monospace;font-size:13px}
.key{outline:2px solid #111}
.pair{display:grid;grid-template-columns:130px 1fr;gap:4px;margin:.4em 0 1.2em}
.lbl{color:#555;font-size:13px;padding-top:4px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
"""


WHITESPACE = {"\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}


def token_label(token: str) -> str:
    """A token as a reader sees it: newline as \u23ce, tab as \u21e5, carriage return as \u240d, other control
    characters escaped, an empty token as \u2205 (spaces stay spaces). One rule for chips, tables and axes."""
    out = "".join(WHITESPACE.get(c, c if c.isprintable() or c == " " else repr(c)[1:-1]) for c in token)
    return out or "\u2205"


def colour_legend(scale: float, what: str = "contribution") -> str:
    """The token strips' colour key: blue (negative) through white to red (positive), at +/- ``scale``."""
    stops = [-1.0, -0.5, 0.0, 0.5, 1.0]
    chips = "".join(f'<span class="tok" style="{_token_style(x * scale, scale)}">{x * scale:+.2f}</span>'
                    for x in stops)
    return (f"<div class='legend'>colour = {html.escape(what)}: {chips} &nbsp;"
            "<span class='tok key'>outlined</span> = base KeyToken &nbsp; <span class='tok' "
            "style='background:#f4f4f4'>grey</span> = not scored (template) &nbsp; \u23ce = newline</div>")


def _colour(score: float, scale: float) -> str:
    """Red for positive contribution, blue for negative, white for zero."""
    x = max(-1.0, min(1.0, score / scale)) if scale > 0 else 0.0
    if x >= 0:
        return f"rgb(255,{int(255 * (1 - x))},{int(255 * (1 - x))})"
    return f"rgb({int(255 * (1 + x))},{int(255 * (1 + x))},255)"


def _token_style(s: float, scale: float) -> str:
    """Background (grey for no score) and, on dark backgrounds, white text for one token's score."""
    bg = "#f4f4f4" if s != s else _colour(s, scale)
    fg = "color:#fff;" if s == s and scale > 0 and abs(s / scale) > 0.6 else ""
    return f"{fg}background:{bg}"


def token_row(tokens: Sequence[str], scores: Sequence[float], keys: set[int], scale: float) -> str:
    """Tokens as coloured spans (KeyTokens outlined); ``scores`` may be NaN for non-attributable tokens."""
    spans = []
    for i, (t, s) in enumerate(zip(tokens, scores)):
        title = "" if s != s else f' title="{s:+.3f}"'
        cls = "tok key" if i in keys else "tok"
        spans.append(f'<span class="{cls}" style="{_token_style(s, scale)}"{title}>{html.escape(token_label(t))}</span>')
    return "".join(spans)


def strip_scale(*rows: Sequence[float | None]) -> float:
    """The colour scale of token strips shown together: the largest |score| among them (1 if none)."""
    vals = [abs(v) for r in rows for v in r if v is not None and v == v]
    return max(vals) if vals and max(vals) > 0 else 1.0


def comparison_block(title: str, tokens: Sequence[str], base: Sequence[float | None], unlearned: Sequence[float | None],
                     keys: set[int], scale: float | None = None) -> str:
    """One probe: its prompt tokens coloured by contribution, base above unlearned (None: no score), both on one
    colour scale (``scale``, default :func:`strip_scale` of the two rows)."""
    b_vals = [math.nan if v is None else v for v in base]  # JSON stores a missing score as null
    u_vals = [math.nan if v is None else v for v in unlearned]
    scale = strip_scale(b_vals, u_vals) if scale is None else scale
    return (f"<h4>{html.escape(title)}</h4><div class='pair'><div class='lbl'>base</div><div>"
            f"{token_row(tokens, b_vals, keys, scale)}</div><div class='lbl'>unlearned</div><div>"
            f"{token_row(tokens, u_vals, keys, scale)}</div></div>")


# ------------------------------------------------------------------------------------------------------------
# Notebook displays (``_repr_html_`` of result objects): readable sizes, scores printed under each token.
# ------------------------------------------------------------------------------------------------------------
NB_CSS = """<style>
.um{font-family:system-ui,sans-serif;color:#222}
.um .cell{display:inline-block;text-align:center;margin:2px 1px;vertical-align:top}
.um .tok{display:block;padding:4px 5px;border-radius:4px;font-family:monospace;font-size:15px;white-space:pre}
.um .key .tok{outline:2px solid #111}
.um .sc{display:block;font-size:11px;color:#555;font-family:monospace}
.um .hd{font-size:13px;margin:.6em 0 .2em}
.um table{border-collapse:collapse;font-size:12px}
.um td,.um th{border:1px solid #ddd;padding:2px 5px;text-align:right}
.um .att td{width:2.6em;height:1.6em;padding:0;font-size:10px;text-align:center}
.um .att th{font-family:monospace;font-weight:normal;white-space:pre}
.um .att th.col{writing-mode:vertical-rl;transform:rotate(180deg);height:6em;vertical-align:bottom}
</style>"""


def token_cells(tokens: Sequence[str], scores: Sequence[float], keys: set[int], scale: float) -> str:
    """Tokens coloured by score (red +, blue -), each with its score printed beneath; KeyTokens outlined."""
    out = []
    for i, (t, s) in enumerate(zip(tokens, scores)):
        label = "" if s != s else f"{s:+.2f}"
        cls = "cell key" if i in keys else "cell"
        out.append(f'<span class="{cls}"><span class="tok" style="{_token_style(s, scale)}">{html.escape(token_label(t))}'
                   f'</span><span class="sc">{label or "&nbsp;"}</span></span>')
    return "".join(out)


def loo_block(tp: Any, contributions: Sequence[float], keys: set[int], lp: float, label: str = "") -> str:
    """One probe's leave-one-out contributions over its attributable tokens (the question; template tokens
    omitted), KeyTokens outlined."""
    lo, hi = min(tp.attributable), max(tp.attributable) + 1
    scores = [math.nan] * (hi - lo)
    for p, c in zip(tp.attributable, contributions):
        scores[p - lo] = float(c)
    vals = [abs(v) for v in scores if v == v]
    head = (f"<div class='hd'><b>{html.escape(tp.probe.id)}</b>{' (' + html.escape(label) + ')' if label else ''}: "
            f"{html.escape(tp.probe.prompt)} &rarr; <i>{html.escape(tp.probe.answer)}</i> &nbsp; LP = {lp:.3f}</div>")
    return head + token_cells(tp.tokens[lo:hi], scores, {k - lo for k in keys}, max(vals, default=1.0))


def frame_html(df: pd.DataFrame, digits: int = 3) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="")


def nb_html(*parts: str) -> str:
    """Wrap notebook HTML in the display style."""
    return NB_CSS + "<div class='um'>" + "".join(parts) + "</div>"


def attention_html(tokens: Sequence[str], patterns: dict[str, Any], start: int, queries: Sequence[int]) -> str:
    """One heatmap table per head: rows = query positions, columns = key positions >= ``start`` (the question
    onwards), plus a first column with the attention mass on everything before ``start`` (template, BOS).
    ``patterns[name]`` is a [query, key] array of attention weights."""
    parts = []
    for name, pat in patterns.items():
        cols = "".join(f"<th class='col'>{html.escape(token_label(t))}</th>" for t in tokens[start:])
        rows = []
        for q in queries:
            before = float(pat[q][:start].sum())
            cells = [f"<td title='{before:.3f}' style='background:{_colour(before, 1.0)}'>{before:.2f}</td>"]
            for k in range(start, len(tokens)):
                w = float(pat[q][k]) if k <= q else math.nan
                cells.append("<td></td>" if w != w else
                             f"<td title='{w:.3f}' style='background:{_colour(w, 1.0)}'>{w:.2f}</td>")
            rows.append(f"<tr><th>{html.escape(token_label(tokens[q]))}</th>{''.join(cells)}</tr>")
        parts.append(f"<div class='hd'><b>{html.escape(name)}</b>: attention weight from each query (row) to each "
                     f"key (column)</div><table class='att'><tr><th></th><th class='col'>(earlier)</th>{cols}</tr>"
                     f"{''.join(rows)}</table>")
    return nb_html(*parts)
