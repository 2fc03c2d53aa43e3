"""The self-contained HTML report: sections of headings and bodies, figures embedded as PNG data."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.core.display import CSS
from unpact_mech.core.io import atomic_write_text

REPORT_CSS = (".toc{border:1px solid #ccc;padding:.5em 1em;margin:1em 0;max-width:60em}.toc ol{margin:.3em 0}"
              ".keyres{border:2px solid #4a7;background:#f4fbf6;padding:.5em 1em;max-width:70em}"
              ".keyres li.effect{color:#063}.keyres li.null{color:#444}"
              "pre{white-space:pre-wrap;overflow-wrap:anywhere;max-width:100%}img{max-width:100%;height:auto}"
              "table.settings td{vertical-align:top;padding:0 .6em;text-align:left;white-space:normal;max-width:60em}"
              ".pinned td:first-child,.pinned th:first-child{position:sticky;left:0;background:#fff;z-index:1}"
              "figcaption{max-width:60em;font-size:92%;color:#333}.legend{font-size:12px;margin:.3em 0 .8em}"
              ".drill td{white-space:normal;max-width:22em;min-width:3em;text-align:left}.drill{font-size:11px}"
              ".drill td:nth-child(2),.drill td:nth-child(3){min-width:14em}.drill th{text-align:left}"
              "details>summary{cursor:pointer;color:#246}.defs{max-width:70em}"
              "td{white-space:nowrap;max-width:none}dl.glossary{columns:2 28em;font-size:90%}dl.glossary dd{margin:0 0 .4em 1em}")


def image(path: str | Path, caption: str = "", number: int | None = None) -> str:
    """A PNG embedded as data, with its caption ("Figure N." first when numbered; the id ``fig-N`` to link)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    fid = f" id='fig-{number}'" if number is not None else ""
    head = f"<b>Figure {number}.</b> " if number is not None else ""
    return (f"<figure{fid}><img src='data:image/png;base64,{data}'/><figcaption>{head}{html.escape(caption)}"
            "</figcaption></figure>")


def anchor(heading: str, taken: set[str]) -> str:
    """A unique HTML id from a heading: lower case, runs of other characters as one hyphen."""
    base = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def write_report(path: str | Path, title: str, sections: Sequence[tuple[str, Any]]) -> Path:
    """Write the report; each section is (heading, HTML string or DataFrame), with an id and a table of contents."""
    taken: set[str] = set()
    ids = [anchor(h, taken) for h, _ in sections]
    toc = "<nav class='toc'><b>Contents</b><ol>" + "".join(
        f"<li><a href='#{i}'>{html.escape(h)}</a></li>" for i, (h, _) in zip(ids, sections)) + "</ol></nav>"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
             f"<title>{html.escape(title)}</title><style>{CSS}{REPORT_CSS}</style></head><body>"
             f"<h1>{html.escape(title)}</h1>{toc}"]
    for sid, (heading, body) in zip(ids, sections):
        parts.append(f"<h2 id='{sid}'>{html.escape(heading)}</h2>")
        if isinstance(body, pd.DataFrame):  # headers wrap at underscores; wide tables scroll, never clip
            body = body.rename(columns=lambda c: str(c).replace("_", " "))
            parts.append("<div class='scroll'>" + body.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
                         + "</div>")
        else:
            parts.append(str(body))
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
