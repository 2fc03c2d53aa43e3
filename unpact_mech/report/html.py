"""The self-contained HTML report: sections of headings and bodies, figures embedded as PNG data."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.display import CSS
from unpact_mech.io import atomic_write_text


def image(path: str | Path, caption: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<figure><img src='data:image/png;base64,{data}'/><figcaption>{html.escape(caption)}</figcaption></figure>"


def write_report(path: str | Path, title: str, sections: Sequence[tuple[str, Any]]) -> Path:
    """Write the report; each section is (heading, HTML string or DataFrame)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(body, pd.DataFrame):  # headers wrap at underscores; wide tables scroll, never clip
            body = body.rename(columns=lambda c: str(c).replace("_", " "))
            parts.append("<div class='scroll'>" + body.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
                         + "</div>")
        else:
            parts.append(str(body))
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
