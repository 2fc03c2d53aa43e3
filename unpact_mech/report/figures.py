"""Seaborn figures. Each function returns the Figure (for notebooks); ``save_figure`` writes PNG/SVG."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # headless outside notebooks; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unpact_mech.errors import UnpactError


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure atomically (format from the suffix: .png or .svg)."""
    from unpact_mech.io import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))


def head_heatmap(heads: pd.DataFrame, value: str = "change", split: str | None = None, title: str = "") -> Figure:
    """Layer x head heatmap of a per-head quantity (e.g. DLA change base -> unlearned)."""
    df = heads if split is None else heads[heads["split"] == split]
    grid = df.groupby(["layer", "head"])[value].mean().unstack("head")
    lim = float(grid.abs().max().max()) or 1.0
    fig, ax = plt.subplots(figsize=(0.45 * grid.shape[1] + 2.5, 0.22 * grid.shape[0] + 1.5))
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
    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 2.5, 0.22 * grid.shape[0] + 1.5))
    sns.heatmap(grid, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax, xticklabels=names,
                cbar_kws={"label": value})
    ax.set_xlabel("source token (* = base KeyToken)")
    ax.set_title(title or f"{probe_id}: {value} by layer and source token")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def logit_lens_curves(lens: pd.DataFrame, hue: str = "model", title: str = "Logit lens") -> Figure:
    """Answer log-prob read from the residual stream at each layer, one curve per model (mean, 95% CI)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=lens, x="layer", y="score", hue=hue, ax=ax, errorbar=("ci", 95))
    ax.set_ylabel("answer log-prob")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def line_sweep(df: pd.DataFrame, x: str, y: str, hue: str, title: str = "", style: str | None = None) -> Figure:
    """A generic line plot (e.g. recovery over the emphasis factor)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, marker="o", ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bar(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", order: Sequence[str] | None = None) -> Figure:
    """A bar chart (e.g. function-word vs KeyToken contribution change)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, order=order)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def patch_heatmap(patch: pd.DataFrame, value: str = "restoration") -> Figure:
    """One panel per patched kind: layer x position restoration, token strings on the x axis."""
    kinds = list(dict.fromkeys(patch["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), squeeze=False)
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
