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

from unpact_mech.errors import UnpactError
from unpact_mech.io import atomic_write


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


def head_heatmap(heads: pd.DataFrame, value: str = "change", split: str | None = None, title: str = "") -> Figure:
    """Layer x head heatmap of a per-head quantity (e.g. DLA change base -> unlearned)."""
    df = heads if split is None else heads[heads["split"] == split]
    grid = df.groupby(["layer", "head"])[value].mean().unstack("head")
    lim = float(grid.abs().max().max()) or 1.0
    fig, ax = subplots(figsize=(0.45 * grid.shape[1] + 2.5, 0.22 * grid.shape[0] + 1.5))
    sns.heatmap(grid, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax, cbar_kws={"label": value})
    ax.set_title(title or f"{value} per head" + (f" ({split})" if split else ""))
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def source_heatmap(layer_source: pd.DataFrame, probe_id: str, value: str = "change", title: str = "") -> Figure:
    """Layer x source-token heatmap for one probe, token strings on the x axis (KeyTokens starred)."""
    df = layer_source[layer_source["probe_id"] == probe_id]
    if df.empty:
        raise UnpactError(f"no rows for probe '{probe_id}'")
    grid = df.pivot_table(index="layer", columns="position", values=value, aggfunc="mean")
    labels = df.drop_duplicates("position").set_index("position")
    names = [
        repr(labels.loc[p, "token"])[1:-1] + ("*" if bool(labels.loc[p].get("is_keytoken", False)) else "")
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


def logit_lens_curves(lens: pd.DataFrame, hue: str = "model", title: str = "Logit lens") -> Figure:
    """Answer log-prob read from the residual stream at each layer, one curve per model (mean, 95% CI)."""
    fig, ax = subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=lens, x="layer", y="score", hue=hue, ax=ax, errorbar=("ci", 95))
    ax.set_ylabel("answer log-prob")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def line_sweep(df: pd.DataFrame, x: str, y: str, hue: str, title: str = "", style: str | None = None) -> Figure:
    """A generic line plot (e.g. recovery over the emphasis factor)."""
    fig, ax = subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, marker="o", ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bar(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", order: Sequence[str] | None = None) -> Figure:
    """A bar chart (e.g. function-word vs KeyToken contribution change)."""
    fig, ax = subplots(figsize=(6.5, 3.6))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, order=order)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title)
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
                    xticklabels=[repr(t)[1:-1] for t in names])
        ax.set_title(f"{kind}: {value}")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def interval_points(df: pd.DataFrame, x: str, y: str, low: str, high: str, hue: str, title: str = "",
                    ylabel: str = "") -> Figure:
    """Point estimates with their interval as error bars, one colour per ``hue`` level, dodged along ``x``."""
    fig, ax = subplots(figsize=(7.5, 3.8))
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
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def frontier(df: pd.DataFrame, x: str = "destructive", y: str = "keytokens", control: str = "random",
             hue: str = "method", title: str = "The dilemma frontier") -> Figure:
    """One solid line per method through its unlearning strengths (``x`` against ``y``, in strength order) and
    the same method's control recovery as a dashed line of the same colour."""
    fig, ax = subplots(figsize=(6.8, 4.4))
    palette = sns.color_palette(n_colors=max(df[hue].nunique(), 1))
    for colour, (name, g) in zip(palette, df.groupby(hue, sort=False)):
        g = g.sort_values("strength")
        ax.plot(g[x], g[y], "-o", color=colour, label=f"{name}: KeyTokens")
        ax.plot(g[x], g[control], "--x", color=colour, alpha=0.8, label=f"{name}: {control} control")
    ax.set_xlabel("destructive rate (retain + general)")
    ax.set_ylabel("recovery rate (best over factors)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
