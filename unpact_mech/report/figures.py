"""Seaborn figures. Each function returns the Figure (for notebooks); ``save_figure`` writes PNG/SVG.

Figures are built outside pyplot's figure manager (:func:`subplots`), so a notebook shows a returned figure
once (the inline backend would otherwise draw every open pyplot figure again at the end of the cell) and
scripts keep no figure alive.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:  # headless outside notebooks; notebooks keep their inline backend
    matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unpact_mech.core.display import token_label
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write


def _notebook_display() -> None:
    """In a Jupyter kernel, show returned Figures as PNG (what ``%matplotlib inline`` registers; our figures are
    not pyplot-managed, so nothing else would draw them)."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"}, bbox_inches="tight")


if "ipykernel" in sys.modules:
    _notebook_display()


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.5, 3.6), squeeze: bool = True) -> Any:
    """``plt.subplots`` without pyplot: (Figure, axes)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure atomically (format from the suffix: .png or .svg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))


def legend_outside(ax: Any, **kw: Any) -> None:
    """The legend to the right of the axes, where it cannot cover a point or an error bar."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, **kw)


def head_heatmap(heads: pd.DataFrame, value: str = "change", split: str | None = None, title: str = "",
                 vlim: float | None = None) -> Figure:
    """Layer x head heatmap of a per-head quantity (e.g. DLA change base -> unlearned), coloured on
    [-vlim, vlim] (default: this grid's largest |value|; pass one ``vlim`` to compare several grids by eye)."""
    df = heads if split is None else heads[heads["split"] == split]
    grid = df.groupby(["layer", "head"])[value].mean().unstack("head")
    lim = vlim if vlim is not None else (float(grid.abs().max().max()) or 1.0)
    fig, ax = subplots(figsize=(0.45 * grid.shape[1] + 2.5, 0.22 * grid.shape[0] + 1.5))
    sns.heatmap(grid, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax, cbar_kws={"label": value})
    ax.set_title(title or f"{value} per head" + (f" ({split})" if split else ""))
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def grid_limit(frames: Sequence[pd.DataFrame], value: str = "change", split: str | None = None) -> float:
    """The shared colour limit of several head grids: the largest |mean value| of any (layer, head) cell."""
    lims = [float((f if split is None else f[f["split"] == split]).groupby(["layer", "head"])[value].mean()
                  .abs().max()) for f in frames]
    lims = [v for v in lims if v == v]
    return max(lims, default=1.0) or 1.0


def source_heatmap(layer_source: pd.DataFrame, probe_id: str, value: str = "change", title: str = "") -> Figure:
    """Layer x source-token heatmap for one probe, token strings on the x axis (KeyTokens starred)."""
    df = layer_source[layer_source["probe_id"] == probe_id]
    if df.empty:
        raise UnpactError(f"no rows for probe '{probe_id}'")
    grid = df.pivot_table(index="layer", columns="position", values=value, aggfunc="mean")
    labels = df.drop_duplicates("position").set_index("position")
    names = [
        token_label(labels.loc[p, "token"]) + ("*" if bool(labels.loc[p].get("is_keytoken", False)) else "")
        for p in grid.columns
    ]
    lim = float(grid.abs().max().max()) or 1.0
    fig, ax = subplots(figsize=(0.55 * len(names) + 2.5, 0.22 * grid.shape[0] + 1.5))
    sns.heatmap(grid, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax, xticklabels=names,
                cbar_kws={"label": value})
    ax.set_xlabel("source token (* = base KeyToken)")
    ax.set_title(title or f"{probe_id}: {value} by layer and source token")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def logit_lens_curves(lens: pd.DataFrame, hue: str = "model", title: str = "Logit lens",
                      start: int | None = None) -> Figure:
    """Answer log-prob read from the residual stream at each layer. (a) one curve per model (mean over probes,
    95% bootstrap band) from layer ``start`` on (default: a third of the way in; the first layers sit far lower,
    about -110 on SmolLM2, and would flatten the late layers where unlearning acts); (b) the second model minus
    the first at every layer, paired per probe."""
    names = list(dict.fromkeys(lens[hue]))
    n_layers = int(lens["layer"].max()) + 1
    start = n_layers // 3 if start is None else start
    fig, (a, b) = subplots(1, 2, figsize=(10.5, 3.6))
    sns.lineplot(data=lens[lens["layer"] >= start], x="layer", y="score", hue=hue, ax=a, errorbar=("ci", 95),
                 seed=0)
    a.set_ylabel("answer log-prob")
    a.set_title(f"(a) layers {start}-{n_layers - 1}")
    if a.get_legend() is not None:
        a.get_legend().set_title("")
    if len(names) >= 2:
        wide = lens.pivot_table(index=["probe_id", "layer"], columns=hue, values="score").reset_index()
        wide["diff"] = wide[names[1]] - wide[names[0]]
        sns.lineplot(data=wide, x="layer", y="diff", ax=b, errorbar=("ci", 95), color="C3", seed=0)
        b.axhline(0, color="black", lw=0.8)
        b.set_ylabel("log-prob difference")
        b.set_title(f"(b) {names[1]} minus {names[0]}, all layers")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def factor_curves(rates: pd.DataFrame, hue: str = "method", panel: str = "route", title: str = "") -> Figure:
    """Recovery rate against the emphasis factor, one panel per ``panel`` level: KeyTokens as points with their
    Wilson 95% interval (dodged so no series hides another) on a log2 factor axis, the random-token control of
    the same colour dashed. ``rates``: rows of ``recovery_rates`` (scope "factor") with ``hue``, condition, factor,
    rate, low, high, n."""
    panels = list(dict.fromkeys(rates[panel]))
    levels = list(dict.fromkeys(rates[hue]))
    palette = dict(zip(levels, sns.color_palette(n_colors=max(len(levels), 1))))
    fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 3.6), squeeze=False)
    factors = sorted(rates["factor"].astype(float).unique())
    for ax, pv in zip(axes[0], panels):
        g = rates[rates[panel] == pv]
        for j, lev in enumerate(levels):
            h = g[g[hue] == lev]
            shift = 2 ** (0.06 * (j - (len(levels) - 1) / 2))  # a dodge along the log axis
            k = h[h.condition == "keytokens"].sort_values("factor")
            if not k.empty:
                n = int(k["n"].max())
                ax.errorbar(k.factor * shift, k.rate, yerr=[(k.rate - k.low).clip(lower=0), (k.high - k.rate).clip(lower=0)],
                            fmt="-o", ms=4, capsize=2, color=palette[lev], label=f"{lev} (n={n})")
            r = h[h.condition == "random"].sort_values("factor")
            if not r.empty:
                ax.plot(r.factor * shift, r.rate, "--", color=palette[lev], alpha=0.6, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"x{f:g}" for f in factors])
        ax.minorticks_off()
        ax.set_ylim(-0.03, max(1.03 * float(g["high"].max()) if g["high"].notna().any() else 1.0, 0.1))
        ax.set_xlabel("emphasis factor")
        ax.set_title(str(pv))
    axes[0][0].set_ylabel("recovery rate (Wilson 95% CI)")
    axes[0][-1].plot([], [], "--", color="grey", label="random-token control")
    legend_outside(axes[0][-1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", order: Sequence[str] | None = None,
        ylabel: str = "") -> Figure:
    """A bar chart of means with seaborn's 95% bootstrap interval (e.g. contribution change by word kind)."""
    fig, ax = subplots(figsize=(7.5, 3.6))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, order=order, errorbar=("ci", 95), seed=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def patch_heatmap(patch: pd.DataFrame, value: str = "restoration") -> Figure:
    """One panel per patched kind: layer x position restoration, token strings on the x axis."""
    kinds = list(dict.fromkeys(patch["kind"]))
    fig, axes = subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        g = patch[patch["kind"] == kind]
        grid = g.pivot_table(index="layer", columns="position", values=value, aggfunc="mean")
        names = g.drop_duplicates("position").set_index("position").loc[grid.columns, "token"]
        sns.heatmap(grid, cmap="RdBu_r", center=0, vmin=-1, vmax=1, ax=ax,
                    xticklabels=[token_label(t) for t in names])
        ax.set_title(f"{kind}: {value}")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def interval_points(df: pd.DataFrame, x: str, y: str, low: str, high: str, hue: str, title: str = "",
                    ylabel: str = "", ylim: tuple[float, float] | None = None, zero_line: bool = False) -> Figure:
    """Point estimates with their interval as error bars, one colour per ``hue`` level, dodged along ``x``;
    ``ylim`` fixes the value axis (e.g. (0, 1) for a share, so a drop is not exaggerated)."""
    fig, ax = subplots(figsize=(8.5, 3.8))
    levels = list(dict.fromkeys(df[hue]))
    xs = list(dict.fromkeys(df[x]))
    width = 0.7 / max(len(levels), 1)
    for j, lev in enumerate(levels):
        g = df[df[hue] == lev].set_index(x).reindex(xs)
        pos = [i - 0.35 + width * (j + 0.5) for i in range(len(xs))]
        yerr = [(g[y] - g[low]).clip(lower=0).fillna(0), (g[high] - g[y]).clip(lower=0).fillna(0)]
        ax.errorbar(pos, g[y], yerr=yerr, fmt="o", capsize=3, label=str(lev))
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=20)
    ax.set_ylabel(ylabel or y)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if zero_line:
        ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def _axis_max(*cols: pd.Series) -> float:
    """An axis end a little above the largest value (interval ends included), at least 0.1, at most 1.03."""
    top = max((float(c.max()) for c in cols if c.notna().any()), default=1.0)
    return min(max(1.1 * top, 0.1), 1.03)


def frontier(df: pd.DataFrame, x: str = "destructive", y: str = "keytokens", control: str = "random",
             hue: str = "method", title: str = "The dilemma frontier", strength_label: str = "step",
             ylabel: str = "recovery rate (best over factors)") -> Figure:
    """One solid line per method through its unlearning strengths (``x`` against ``y``, in strength order, each
    point with its Wilson 95% intervals on both axes and labelled with its strength) and the same method's
    control recovery as a dashed line of the same colour. Axes end just above the data."""
    fig, ax = subplots(figsize=(8.6, 4.6))
    palette = sns.color_palette(n_colors=max(df[hue].nunique(), 1))
    for colour, (name, g) in zip(palette, df.groupby(hue, sort=False)):
        g = g.sort_values("strength")
        xerr = [(g[x] - g[f"{x}_low"]).clip(lower=0), (g[f"{x}_high"] - g[x]).clip(lower=0)] \
            if f"{x}_low" in g else None
        yerr = [(g[y] - g[f"{y}_low"]).clip(lower=0), (g[f"{y}_high"] - g[y]).clip(lower=0)] \
            if f"{y}_low" in g else None
        ax.errorbar(g[x], g[y], xerr=xerr, yerr=yerr, fmt="-o", ms=4, capsize=2, elinewidth=0.6, color=colour,
                    ecolor=(*colour[:3], 0.45),
                    label=f"{name}: KeyTokens")
        ax.plot(g[x], g[control], "--x", color=colour, alpha=0.7, label=f"{name}: {control} control")
        for xv, yv, sv in zip(g[x], g[y], g["strength"]):
            ax.annotate(f"{sv:.2g}", (xv, yv), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour)
    hx = [df[c] for c in (x, f"{x}_high") if c in df]
    hy = [df[c] for c in (y, f"{y}_high", control) if c in df]
    ax.set_xlim(-0.02, _axis_max(*hx))
    ax.set_ylim(-0.02, _axis_max(*hy))
    ax.set_xlabel(f"destructive rate on retain + general facts (Wilson 95% CI)\npoint labels: {strength_label}")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def power_curves(curve: pd.DataFrame, title: str = "Power of the KeyToken-specific test (paired bootstrap, 95%)",
                 target: float = 0.8) -> Figure:
    """Simulated power against the planted effect, one line per n, with the Wilson interval over replicates and
    the target power dashed. ``curve``: rows of :func:`unpact_mech.findings.power.power_curve`."""
    fig, ax = subplots(figsize=(7.5, 4.0))
    for n, g in curve.groupby("n"):
        ax.errorbar(g.effect, g.power, yerr=[g.power - g.power_low, g.power_high - g.power], fmt="-o", ms=3,
                    capsize=2, label=f"n = {n}")
    ax.axhline(target, color="grey", ls="--", lw=0.8)
    p = float(curve.p_random.iloc[0]) if len(curve) else 0.0
    reps = int(curve.reps.iloc[0]) if len(curve) else 0
    ax.set_xlabel(f"planted effect: KeyToken recovery rate minus the random control's ({p:g})")
    ax.set_ylabel(f"power (share of {reps} studies; Wilson 95% CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    legend_outside(ax)
    fig.tight_layout()
    return fig

