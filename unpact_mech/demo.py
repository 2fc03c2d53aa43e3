"""``unpact demo``: the unlearning dilemma end to end on one base model, with a summary table and an HTML report.

Stages are resumable and cached under ``OUT``: the probe split (``data.json``), the KeyToken table
(``keytokens.csv``), checkpoints (``checkpoints/METHOD``) and per-method results (``METHOD/result.json``).
A rerun with everything cached does not load the model at all; it only rebuilds the report. Every write is
atomic. The base model's side (leave-one-out, scores, decompositions) is computed once and reused across
methods (``Subject.memoize``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.io import atomic_write_json, read_table, write_table

PAPER_METHODS = ("ga_gdr", "ga_klr", "npo_gdr", "npo_klr", "task_vector", "rmu")
# CPU-sized learning rates, chosen so each method reaches the forget target within the demo's 8 steps on
# SmolLM2; every method stops at the same forget target (or at max steps).
SETTINGS: dict[str, dict[str, Any]] = {
    "ga_gdr": {"lr": 1e-4}, "ga_klr": {"lr": 7e-5}, "npo_gdr": {"lr": 3e-4}, "npo_klr": {"lr": 2.5e-4},
    "simnpo": {"lr": 3e-4}, "idk_dpo": {"lr": 3e-4}, "task_vector": {"lr": 1e-4, "tv_scale": 1.0, "steps": 6},
    "rmu": {"lr": 3e-2}, "ga": {"lr": 1e-4}, "npo": {"lr": 1e-4},
}
FACTORS = (1.0, 2.0, 4.0, 8.0)


class LazyBase:
    """The base model, loaded (and memoized) only when a stage needs it, and its Analysis (built once)."""

    def __init__(self, model: Any) -> None:
        self.spec = model if isinstance(model, str) else None
        self._subject = None if isinstance(model, str) else model.memoize() if model.memo is None else model
        self._analysis: Any = None

    def analysis(self, probes: Sequence[Any], params: Any) -> Any:
        """The base side on ``probes`` under ``params``: scores, leave-one-out and KeyTokens, computed once."""
        from unpact_mech.analysis import Analysis

        if self._analysis is None or self._analysis.params != params:
            self._analysis = Analysis(self.get(), list(probes), params)
        return self._analysis

    def get(self) -> Any:
        if self._subject is None:
            from unpact_mech.models import load_model

            assert self.spec is not None  # no Subject was given, so a spec was
            self._subject = load_model(self.spec, verbose=True).memoize()
        return self._subject

    @property
    def loaded(self) -> bool:
        return self._subject is not None

    @property
    def key(self) -> str:
        """What cached stages are stamped with: the spec, or the given Subject's name (never loads the model)."""
        if self.spec is not None:
            return self.spec
        assert self._subject is not None
        return str(self._subject.name)


def _known(subject: Any, probes: Sequence[Any]) -> list[Any]:
    from unpact_mech.data import filter_known

    return filter_known(subject, list(probes))[0]


def rate_columns(name: str, rate: Any) -> dict[str, Any]:
    """A rate as numeric columns: ``name`` (the rate), ``name_k``, ``name_n``, ``name_low``, ``name_high``."""
    d = rate if isinstance(rate, dict) else rate.to_dict()
    return {name: float(d["rate"]), **{f"{name}_{k}": (int(d[k]) if k in ("k", "n") else float(d[k]))
                                       for k in ("k", "n", "low", "high")}}


def format_rates(table: pd.DataFrame) -> pd.DataFrame:
    """For display only: each rate column as 'rate (k/n, low-high)', its count and interval columns dropped."""
    out = table.copy()
    for name in [c for c in table.columns if f"{c}_n" in table.columns]:
        def fmt(r: Any, name: str = name) -> str:
            n = r[f"{name}_n"]
            if not n or n != n:
                return "n/a"
            return f"{r[name]:.2f} ({int(r[f'{name}_k'])}/{int(n)}, {r[f'{name}_low']:.2f}-{r[f'{name}_high']:.2f})"

        out[name] = table.apply(fmt, axis=1)
        out = out.drop(columns=[f"{name}_{k}" for k in ("k", "n", "low", "high")])
    return out


def method_settings(method: str, steps: int | None, target: float) -> dict[str, Any]:
    """The demo's unlearning settings for a method: its tuned defaults, then the user's explicit ``steps``."""
    s = {"steps": 8, "target_forget_acc": target, "check_every": 2, "checkpoint_every": 0, **SETTINGS.get(method, {})}
    if steps is not None:  # explicit settings beat the demo's per-method defaults (Task Vector's 6 steps too)
        s["steps"] = steps
    return s


def unlearn_stage(lazy: LazyBase, method: str, forget: list, retain: list, out: Path, steps: int | None,
                  target: float, progress: bool = True, on_change: str = "recompute") -> Path:
    """``OUT/checkpoints/METHOD``, trained with the demo's settings; reused while its stamp (model, data,
    settings, seed) is unchanged."""
    from unpact_mech.pipeline import stage
    from unpact_mech.unlearning import unlearn

    ckpt = out / "checkpoints" / method
    settings = method_settings(method, steps, target)
    stamp = _checkpoint_stamp(lazy, method, forget, retain, steps, target)

    def train() -> Path:
        # no mid-run resume state for these short runs (saving it costs more than redoing them); the
        # finished checkpoint is the resume point of the demo
        return unlearn(lazy.get(), method, forget, retain, ckpt, progress=progress, overwrite=True, **settings)

    return stage(f"unlearn {method}", out / "checkpoints" / f"{method}.stamp.json", stamp,
                 lambda: (ckpt / "unpact.json").exists(), lambda: ckpt, train, on_change)


def add_run_arguments(ap: Any, out: str) -> None:
    """The options every demo-like script shares (model, methods, output directory, steps, forget target)."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--out", default=out, help="output directory (reruns reuse its checkpoints)")
    ap.add_argument("--steps", type=int, default=None, help="max unlearning steps per method (default: 8, Task "
                    "Vector 6; an explicit value applies to every method)")
    ap.add_argument("--target", type=float, default=0.25, help="stop when forget fact top-1 accuracy <= target")
    ap.add_argument("--on-change", default="recompute", choices=["recompute", "stop"],
                    help="a cached stage made with other inputs: recompute it, or stop and say what changed")


def method_stage(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
                 patch: bool, params: Any = None, on_change: str = "recompute") -> dict[str, Any]:
    """Unlearn with one method (cached) and measure the three findings under the KeyToken ``params``; results
    cached as JSON and reused while their stamp (checkpoint stamp, data, params, patch) is unchanged."""
    from dataclasses import asdict

    from unpact_mech.keytokens import KeyTokenParams
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp, stage

    params = params or KeyTokenParams()
    res_file = out / method / "result.json"
    stamp = make_stamp(checkpoint=_checkpoint_stamp(lazy, method, data["forget"], data["retain"], steps, target), params=asdict(params),
                       data={k: data_hash([_probe_key(p) for p in v]) for k, v in data.items()}, patch=patch)
    return stage(f"findings {method}", out / method / "result.stamp.json", stamp, res_file.exists,
                 lambda: json.loads(res_file.read_text()),
                 lambda: _measure(lazy, method, data, out, steps, target, patch, params, on_change), on_change)


def _checkpoint_stamp(lazy: LazyBase, method: str, forget: list, retain: list, steps: int | None,
                      target: float) -> dict[str, Any]:
    """What determines a method's checkpoint: model, method, its settings and the forget/retain data."""
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp

    return make_stamp(model=lazy.key, method=method, settings=method_settings(method, steps, target),
                      forget=data_hash([_probe_key(p) for p in forget]),
                      retain=data_hash([_probe_key(p) for p in retain]))


def _measure(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
             patch: bool, params: Any, on_change: str) -> dict[str, Any]:
    """The body of :func:`method_stage`: unlearn (cached), then the three findings on the shared Analysis."""
    from unpact_mech.findings import destruction, function_word_penalisation, recovery
    from unpact_mech.metrics import accuracy
    from unpact_mech.models import load_model, read_provenance
    from unpact_mech.scoring import probe_table
    from unpact_mech.tracking import compare, localise

    res_file = out / method / "result.json"
    base = lazy.get()
    forget, retain, general = data["forget"], data["retain"], data["general"]
    an = lazy.analysis(forget + retain + general, params)  # the base side, once for every method
    ckpt = unlearn_stage(lazy, method, forget, retain, out, steps, target, on_change=on_change)
    t0 = time.perf_counter()
    prov = read_provenance(ckpt)
    unl = load_model(str(ckpt), dtype=base.dtype, device=str(base.device)).memoize()
    f_tab = probe_table(unl, an.probes.select(forget))
    cmp_f = compare(an, unl, forget)
    sweep_df, rates = recovery(an, unl, forget, FACTORS)
    _, drates = destruction(an, unl, retain + general)
    cmp_r = compare(an, unl, retain)  # token-level finding 3 on the retain split (the demo's time budget)
    fw = function_word_penalisation(cmp_r)
    loc = localise(an, unl, forget[:4] + retain[:2])
    d = out / method
    write_table(cmp_f.per_probe, d / "keyword_focus.csv")
    write_table(sweep_df, d / "emphasis_sweep.csv")
    write_table(rates, d / "recovery_rates.csv")
    write_table(fw, d / "function_words.csv")
    write_table(loc.heads, d / "heads.csv")
    write_table(loc.keytoken_route, d / "keytoken_route.csv")
    write_table(loc.logit_lens, d / "logit_lens.csv")
    examples = []
    for rb, ru in list(zip(cmp_f.base, cmp_f.unlearned))[:3]:
        from unpact_mech.keytokens import select_keytokens

        tp = rb.tprobe
        keys = {rb.positions[i] for i in select_keytokens(rb.contributions, params)}
        b = [float("nan")] * tp.prompt_len
        u = [float("nan")] * tp.prompt_len
        for pos, cb, cu in zip(rb.positions, rb.contributions.tolist(), ru.contributions.tolist()):
            b[pos], u[pos] = cb, cu
        lo = min(tp.attributable)
        examples.append({"id": tp.probe.id, "prompt": tp.probe.prompt, "answer": tp.probe.answer,
                         "tokens": list(tp.tokens[lo : tp.prompt_len]), "base": b[lo:], "unlearned": u[lo:],
                         "keys": [k - lo for k in keys]})
    if patch:
        from unpact_mech.patching import patch_positions

        tp = an.probes.get(forget[0])
        # the residual stream every third layer (attn_out / mlp_out are one call away: unpact patch)
        pt = patch_positions(base, unl, tp, ["resid_pre"], list(range(0, base.cfg.n_layers, 3)))
        write_table(pt, d / "patch_positions.csv")
    best = rates[rates.scope == "best"].set_index("route")
    fw_mean = fw.groupby("kind")["change"].mean().to_dict()
    row = {
        "method": method,
        "steps": prov["steps"],
        "stopped_at": prov.get("stopped_at"),
        "train_s": prov.get("train_seconds"),
        "forget_acc": accuracy(list(f_tab.fact_top1)).rate,
        "forget_lp_before": float(cmp_f.per_probe.lp_base.mean()),
        "forget_lp_after": float(cmp_f.per_probe.lp_unlearned.mean()),
        "retain_acc": 1 - drates["retain"].rate if "retain" in drates and drates["retain"].defined else float("nan"),
        "focus_before": cmp_f.summary["mean_focus_base"],
        "focus_after": cmp_f.summary["mean_focus_unlearned"],
        "keytoken_jaccard": cmp_f.summary["mean_keytoken_jaccard"],
        **{k: v for r in best.index for k, v in rate_columns(f"recovery_{r}", best.loc[r]).items()},
        **{k: v for s in ("retain", "general") if s in drates
           for k, v in rate_columns(f"destructive_{s}", drates[s]).items()},
        "fw_change": fw_mean.get("function word", float("nan")),
        "keytoken_change": fw_mean.get("KeyToken", float("nan")),
        "route_summary": loc.summary,
        "examples": examples,
        "analysis_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(res_file, row)
    return row


def build_report(out: Path, rows: list[dict[str, Any]], data: dict[str, list], model: str) -> Path:
    """The self-contained ``report.html`` with figures saved as PNG beside it."""
    from unpact_mech.report.figures import (
        bar,
        head_heatmap,
        line_sweep,
        logit_lens_curves,
        patch_heatmap,
        save_figure,
    )
    from unpact_mech.report.html import comparison_block, image, write_report

    summary = format_rates(summary_table(rows).round(3))
    sections: list[tuple[str, Any]] = [
        ("Summary", f"<p>Base model <b>{model}</b>; {len(data['forget'])} forget, {len(data['retain'])} retain and "
                    f"{len(data['general'])} general facts the base model answers (fact span top-1). Every method "
                    "unlearns the forget split until its fact top-1 accuracy is at most the target, or max steps. "
                    "Recovery columns: forget probes restored at any emphasis factor / eligible probes "
                    "(prompt: repeat, mark, instruct).</p>"),
        ("Summary table", summary),
    ]
    figs = out / "figures"
    rec_frames, fw_frames = [], []
    for r in rows:
        m = r["method"]
        rates = read_table(out / m / "recovery_rates.csv")
        rates = rates[rates.scope != "best"].copy()
        num = rates[~rates.route.str.startswith("prompt")].copy()
        num["factor"] = num.factor.astype(float)
        rec_frames.append(num.assign(method=m))
        fw_frames.append(read_table(out / m / "function_words.csv").assign(method=m))
        body = "".join(comparison_block(f"{e['id']}: {e['prompt']} -> {e['answer']}", e["tokens"], e["base"],
                                        e["unlearned"], set(e["keys"])) for e in r["examples"])
        heads = read_table(out / m / "heads.csv")
        p1 = save_figure(head_heatmap(heads, "change", "forget", f"{m}: head DLA change on forget probes"),
                         figs / f"{m}_heads_forget.png")
        p2 = save_figure(logit_lens_curves(read_table(out / m / "logit_lens.csv"), title=f"{m}: logit lens"),
                         figs / f"{m}_logit_lens.png")
        route = html_pre(r["route_summary"])
        patch = ""
        if (out / m / "patch_positions.csv").exists():
            pt = read_table(out / m / "patch_positions.csv")
            patch = image(save_figure(patch_heatmap(pt), figs / f"{m}_patch.png"),
                          f"{m}: restoration when patching base activations into the unlearned model")
        sections.append((f"{m}: contributions before and after (red = supports the answer; outlined = base KeyToken)",
                          body + route + image(p1) + image(p2) + patch))
    rec = pd.concat(rec_frames, ignore_index=True)
    p = save_figure(line_sweep(rec, "factor", "rate", "method", "Recovery rate over emphasis factor", style="route"),
                    figs / "recovery_curves.png")
    fw = pd.concat(fw_frames, ignore_index=True)
    q = save_figure(bar(fw, "method", "change", "kind", "Contribution change on retain probes"),
                    figs / "function_words.png")
    sections.insert(2, ("Finding 2: recovery by emphasis", image(p)))
    sections.insert(3, ("Finding 3: what unlearning penalised on retain probes", image(q)))
    return write_report(out / "report.html", "unPact: the unlearning dilemma, mechanistically", sections)


def html_pre(text: str) -> str:
    import html

    return f"<pre>{html.escape(text)}</pre>"


SUMMARY_COLUMNS = ["method", "steps", "forget_acc", "forget_lp_before", "forget_lp_after", "retain_acc",
                   "focus_before", "focus_after", "keytoken_jaccard", "recovery_embed", "recovery_attention",
                   "recovery_prompt:repeat", "recovery_prompt:mark", "recovery_prompt:instruct",
                   "destructive_retain", "destructive_general", "fw_change", "keytoken_change"]


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    # results read back from JSON hold null where a fresh run holds NaN (JSON has no NaN)
    df = pd.DataFrame(rows).replace({None: float("nan")}).infer_objects()
    cols = [x for c in SUMMARY_COLUMNS for x in (c, *(f"{c}_{k}" for k in ("k", "n", "low", "high")))]
    return df[[c for c in cols if c in df.columns]]


def _probe_key(p: Any) -> list[Any]:
    return [p.id, p.prompt, p.answer, p.split, p.fact]


def data_stage(lazy: LazyBase, out: Path, pool: Sequence[Any], known_only: bool,
               max_forget: int | None, on_change: str = "recompute") -> tuple[dict[str, list], str]:
    """Forget/retain/general probes the base model knows (fact top-1) and its name, cached as ``OUT/data.json``."""
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp, stage

    f = out / "data.json"
    stamp = make_stamp(model=lazy.key, pool=data_hash([_probe_key(p) for p in pool]), known_only=known_only,
                       max_forget=max_forget)

    def compute() -> dict[str, Any]:
        known = _known(lazy.get(), pool) if known_only else list(pool)
        ids = {s: [p.id for p in known if p.split == s] for s in ("forget", "retain", "general")}
        if max_forget:
            ids["forget"] = ids["forget"][:max_forget]
        cached = {"model_name": lazy.get().name, "ids": ids}
        atomic_write_json(f, cached)
        return cached

    cached = stage("data", out / "data.stamp.json", stamp, f.exists, lambda: json.loads(f.read_text()), compute,
                   on_change)
    by_id = {p.id: p for p in pool}
    return {s: [by_id[i] for i in ids] for s, ids in cached["ids"].items()}, cached["model_name"]


def keytoken_stage(lazy: LazyBase, out: Path, probes: Sequence[Any], params: Any = None,
                   on_change: str = "recompute") -> pd.DataFrame:
    """The base model's KeyToken table for ``probes`` (cached as ``OUT/keytokens.csv`` per probe set and params)."""
    from dataclasses import asdict

    from unpact_mech.analysis import Analysis
    from unpact_mech.keytokens import KeyTokenParams, keytoken_table
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp, stage

    params = params or KeyTokenParams()
    f = out / "keytokens.csv"
    stamp = make_stamp(model=lazy.key, probes=data_hash([_probe_key(p) for p in probes]), params=asdict(params))

    def compute() -> pd.DataFrame:
        an = Analysis(lazy.get(), list(probes), params)
        table = keytoken_table(an.loo(progress=True), params)
        write_table(table, f)
        return table

    return stage("keytokens", out / "keytokens.stamp.json", stamp, f.exists, lambda: read_table(f), compute, on_change)


def run_demo(model: Any = "smollm2-135m", methods: Sequence[str] = PAPER_METHODS, out: str | Path = "unpact_out/demo",
             steps: int | None = None, target: float = 0.25, patch: bool = True, max_forget: int | None = None,
             probes: Sequence[Any] | None = None, known_only: bool = True,
             on_keytokens: Callable[[pd.DataFrame], None] | None = None,
             keytoken_probes: Sequence[Any] | None = None, params: Any = None,
             on_change: str = "recompute") -> pd.DataFrame:
    """Run (or resume) the demo; returns the summary table and writes ``OUT/report.html``.

    ``model`` is a model spec or a loaded Subject. ``on_keytokens`` receives the base model's KeyToken table
    of ``keytoken_probes`` (default: the first 12 probes) before the unlearning stages; the CLI prints it.
    """
    from unpact_mech.data import load_benchmark

    out = Path(out)
    t0 = time.perf_counter()
    lazy = LazyBase(model)
    pool = list(probes) if probes is not None else load_benchmark("facts")
    if on_keytokens is not None:
        kp = list(keytoken_probes) if keytoken_probes is not None else pool[:12]
        on_keytokens(keytoken_stage(lazy, out, kp, params, on_change))
    data, model_name = data_stage(lazy, out, pool, known_only, max_forget, on_change)
    print(f"[unpact] base knows {len(data['forget'])} forget, {len(data['retain'])} retain, "
          f"{len(data['general'])} general facts", flush=True)
    rows = []
    for i, m in enumerate(methods):
        t = time.perf_counter()
        print(f"[unpact] method {i + 1}/{len(methods)}: {m}", flush=True)
        rows.append(method_stage(lazy, m, data, out, steps, target, patch and i == 0, params, on_change))
        print(f"[unpact] {m} done in {time.perf_counter() - t:.0f} s", flush=True)
    table = summary_table(rows)
    write_table(table, out / "summary.csv")
    report = build_report(out, rows, data, model_name)
    print(f"[unpact] demo finished in {time.perf_counter() - t0:.0f} s "
          f"({'model loaded' if lazy.loaded else 'all stages cached, model not loaded'}); report: {report}", flush=True)
    return table
