"""The report's drill-down and settings: the probes behind every rate, and what the run was.

Read from the stage files on disk (``OUT/METHOD/*.csv``, the checkpoints' ``unpact.json``, every ``*.stamp.json``),
so the report needs no model. A probe is *recovered by* a route when some factor of that route makes the
unlearned model right on it with the base KeyTokens emphasised (the rate's "best over factors"); *destroyed*
when the base model is right on it and the unlearned model wrong, under that criterion.
"""

from __future__ import annotations

import ast
import hashlib
import html
import importlib.metadata as md
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.core.io import read_table
from unpact_mech.core.meter import describe
from unpact_mech.evals.criteria import CRITERIA
from unpact_mech.model.loading import read_provenance
from unpact_mech.runtime.pipeline import read_cost, read_stamp
from unpact_mech.runtime.results import table_path
from unpact_mech.unlearning import METHODS

# the hyperparameters every method uses; each method's own are its registered defaults
COMMON_HPARAMS = ("lr", "steps", "batch_size", "full_batch", "grad_clip", "seed")


def _read(path: Path) -> pd.DataFrame | None:
    return read_table(path) if path.exists() else None


def recovered_by(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per (criterion, probe): the routes whose KeyToken emphasis makes the unlearned model right at some factor,
    and the factors that did it (``route xF``), as one readable string each."""
    k = sweep[(sweep.condition == "keytokens") & sweep.correct.astype(bool)]
    rows = []
    for (crit, pid), g in k.groupby(["criterion", "probe_id"], sort=False):
        parts = []
        for route, h in g.groupby("route", sort=False):
            fs = sorted({float(f) for f in h.factor if f == f})
            parts.append(route + (" " + "/".join(f"x{f:g}" for f in fs) if fs else ""))
        rows.append({"criterion": crit, "probe_id": pid, "recovered_by": "; ".join(parts)})
    return pd.DataFrame(rows, columns=["criterion", "probe_id", "recovered_by"])


def _mark(v: Any) -> str:
    if v is None or v != v:
        return ""
    return "yes" if bool(v) else "no"


SHORT = {"teacher_forced": "tf", "generation": "gen", "multiple_choice": "mc"}  # column tags per criterion


def forget_drill(out: Path, method: str, data: dict[str, list]) -> pd.DataFrame:
    """One row per forget probe: prompt, answer, and per criterion whether the base and the unlearned model
    answer it, whether it is eligible for recovery, which routes recovered it, and the generated answers."""
    elig, sweep = _read(table_path(out, method, "eligibility")), _read(table_path(out, method, "emphasis_sweep"))
    rec = recovered_by(sweep) if sweep is not None and not sweep.empty else pd.DataFrame(
        columns=["criterion", "probe_id", "recovered_by"])
    rows = []
    for p in data.get("forget", []):
        row: dict[str, Any] = {"probe": p.id, "prompt": p.prompt, "answer": p.answer}
        for crit in CRITERIA.values():
            e = elig[(elig.criterion == crit.name) & (elig.probe_id == p.id)] if elig is not None else pd.DataFrame()
            sfx = SHORT.get(crit.name, crit.name)
            if e.empty:
                continue
            b, u = bool(e.base_correct.iloc[0]), bool(e.unlearned_correct.iloc[0])
            r = rec[(rec.criterion == crit.name) & (rec.probe_id == p.id)]
            row[f"base right ({sfx})"], row[f"unlearned right ({sfx})"] = _mark(b), _mark(u)
            row[f"eligible ({sfx})"] = _mark(b and not u)
            row[f"recovered by ({sfx})"] = r.recovered_by.iloc[0] if len(r) and b and not u else ""
            for who in ("base", "unlearned"):
                col = f"generated_{who}"
                if col in e and e[col].notna().any():
                    row[f"{who} generated"] = str(e[col].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def destruction_drill(out: Path, method: str, data: dict[str, list]) -> pd.DataFrame:
    """One row per retain or general probe: per criterion whether the base and the unlearned model answer it and
    whether it was destroyed, with the generated answers."""
    t = _read(table_path(out, method, "destruction"))
    if t is None:
        return pd.DataFrame()
    by_id = {p.id: p for s in ("retain", "general") for p in data.get(s, [])}
    rows = []
    for pid, g in t.groupby("probe_id", sort=False):
        p = by_id.get(pid)
        row: dict[str, Any] = {"probe": pid, "split": g.split.iloc[0], "prompt": getattr(p, "prompt", ""),
                               "answer": getattr(p, "answer", "")}
        for _, r in g.iterrows():
            sfx = SHORT.get(r.criterion, r.criterion)
            row[f"base right ({sfx})"], row[f"unlearned right ({sfx})"] = _mark(r.correct_base), _mark(r.correct_unlearned)
            row[f"destroyed ({sfx})"] = _mark(bool(r.correct_base) and not bool(r.correct_unlearned))
            if "generated_base" in r and r.generated_base == r.generated_base:
                row["base generated"], row["unlearned generated"] = str(r.generated_base), str(r.generated_unlearned)
        rows.append(row)
    return pd.DataFrame(rows)


def drill_down(out: Path, method: str, data: dict[str, list]) -> str:
    """The per-probe tables behind a method's rates, folded (HTML)."""
    parts = []
    for title, t in ((f"forget probes: eligible for recovery and recovered ({method})", forget_drill(out, method, data)),
                     (f"retain and general probes: destroyed ({method})", destruction_drill(out, method, data))):
        if t.empty:
            continue
        parts.append(f"<details class='drill-{'forget' if 'forget' in title else 'destroyed'}'><summary>probe by "
                     f"probe: {html.escape(title)}, {len(t)} probes</summary><div class='scroll drill'>"
                     + t.to_html(index=False, na_rep="", escape=True) + "</div></details>")
    return "".join(parts)


def eligibility_counts(out: Path, methods: list[str]) -> pd.DataFrame:
    """Per method and criterion: forget probes the base answers, those eligible for recovery, and the retain /
    general probes the base answers (the n of each destructive rate)."""
    rows = []
    for m in methods:
        e, dt = _read(table_path(out, m, "eligibility")), _read(table_path(out, m, "destruction"))
        for crit in CRITERIA:
            if CRITERIA[crit].needs_choices and (e is None or not (e.criterion == crit).any()):
                continue  # judged only on studies of probes with choices
            row: dict[str, Any] = {"method": m, "criterion": crit}
            if e is not None:
                g = e[e.criterion == crit]
                row["forget answered by base"] = f"{int(g.base_correct.sum())}/{len(g)}"
                row["eligible for recovery"] = int((g.base_correct & ~g.unlearned_correct.astype(bool)).sum())
            if dt is not None:
                for split in ("retain", "general"):
                    g = dt[(dt.criterion == crit) & (dt.split == split)]
                    row[f"{split} answered by base"] = f"{int(g.correct_base.sum())}/{len(g)}"
            rows.append(row)
    return pd.DataFrame(rows)


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def method_hparams(method: str, prov: dict[str, Any]) -> str:
    """A checkpoint's hyperparameters as trained: the common ones and the method's own (its registered
    defaults), plus what it resolved (e.g. Task Vector's scale) and where it stopped."""
    hp = prov.get("hyperparameters", {})
    if isinstance(hp, str):
        try:
            hp = ast.literal_eval(hp)
        except (ValueError, SyntaxError):
            hp = {}
    cls = METHODS.get(method)
    own = list(getattr(cls, "defaults", {}) or {})
    keys = [k for k in (*COMMON_HPARAMS, *own) if k in hp]
    parts = [f"{k}={hp[k]}" for k in dict.fromkeys(keys)]
    parts += [f"{k}={v}" for k, v in (prov.get("resolved") or {}).items()]
    for k in ("stopped_at", "target_reached", "forget_fact_acc_before", "forget_fact_acc_after", "train_seconds"):
        if k in prov:
            v = prov[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def stage_stamps(out: Path) -> list[tuple[str, str]]:
    """Every stage's stamp file under ``out``: (stage file, 'sha256 prefix of the stamp, code fingerprint, written
    at, and what computing it cost: seconds and peak memory')."""
    rows = []
    for f in sorted(out.rglob("*.stamp.json")):
        stamp = read_stamp(f)
        if stamp is None:
            continue
        text = json.dumps(stamp, sort_keys=True)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.stat().st_mtime))
        cost = read_cost(f)
        took = "" if cost is None else f", took {describe(cost)}"
        rows.append((f"stage {f.relative_to(out)}",
                     f"stamp {hashlib.sha256(text.encode()).hexdigest()[:12]}, code {stamp.get('code', '')}, "
                     f"written {when}{took}"))
    return rows


def settings_rows(out: Path, rows: list[dict[str, Any]], data: dict[str, list], model: str,
                  settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings block: (setting, value) pairs."""
    first = rows[0] if rows else {}
    out_rows = [("model", model), ("dtype / device", f"{first.get('dtype', '?')} / {first.get('device', '?')}"),
                *((f"{k} facts", str(len(v))) for k, v in data.items())]
    for r in rows:
        prov = read_provenance(out / "checkpoints" / r["method"])
        out_rows.append((f"method {r['method']}", f"steps taken {r.get('steps')}; " + method_hparams(r["method"], prov)))
    if "keytoken_params" in settings:
        out_rows.append(("KeyToken parameters", ", ".join(f"{k}={v}" for k, v in settings["keytoken_params"].items())))
    if "factors" in settings:
        out_rows.append(("emphasis factors", ", ".join(f"x{f:g}" for f in settings["factors"])))
    out_rows += [(f"{group} {k}", str(v)) for group in ("budget", "route_budget") for k, v in settings.get(group, {}).items()]
    shown = {"budget", "route_budget", "factors", "keytokens"}  # the study's config (OUT/study.json), the rest of it
    out_rows += [(f"config {k}", json.dumps(v)) for k, v in settings.get("config", {}).items() if k not in shown]
    out_rows.append(("seeds", "random-token control draws: seed 0 (recovery); unlearning: each method's seed above"))
    out_rows += [(f"version {p}", _version(p)) for p in ("unpact_mech", "torch", "transformers", "transformer-lens")]
    return out_rows + stage_stamps(out)


__all__ = ["destruction_drill", "drill_down", "eligibility_counts", "forget_drill", "recovered_by", "settings_rows"]
