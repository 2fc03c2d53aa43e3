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
# CPU-sized learning rates, fixed by one rule before any finding was measured: starting from the rates used
# under the first loss forms, lr * 2^(-k/2) with the smallest k at which the method needs at least 3 steps
# (forget accuracy checked after every step) to reach the 0.25 target on the demo's forget set, so that each
# stops close to the target and leaves a trajectory for the frontier. Every method stops at the same target
# (or at max steps); Task Vector's scale is bisected to it.
SETTINGS: dict[str, dict[str, Any]] = {
    "ga_gdr": {"lr": 1e-4}, "ga_klr": {"lr": 4.95e-5}, "npo_gdr": {"lr": 3.75e-5}, "npo_klr": {"lr": 4.42e-5},
    "simnpo": {"lr": 3e-4}, "idk_dpo": {"lr": 3e-4}, "task_vector": {"lr": 1e-4, "tv_scale": 1.0, "steps": 6},
    "rmu": {"lr": 2.12e-2}, "ga": {"lr": 1e-4}, "npo": {"lr": 1e-4},
}
FACTORS = (1.0, 2.0, 8.0)
# The demo's budget, fixed before any result was seen (the full versions are in analyses/: every known fact,
# factors 1-2-4-8, 3 draws, every route and prompt edit under both criteria, a longer trajectory): probes per
# split, random-control draws, what generation judges (costly: one forward per generated token), and the
# frontier's emphasis (attention x8, teacher forced, one draw) at every 2nd step and the last, and Task
# Vector's frontier scales.
BUDGET: dict[str, Any] = {"per_split": 12, "candidates": 200, "n_draws": 2, "gen_factors": (8.0,),
                          "gen_prompt_styles": ("instruct",),
                          "frontier": {"factors": (1.0, 8.0), "routes": ("attention",), "n_draws": 1, "every": 2},
                          "tv_fractions": (0.5, 1.0)}
# The "how superficial is the forgetting" table (unpact_mech.routes), fixed before any route was run: emphasis
# from the findings stage (both criteria), weights RTN-quantised to 8 and 4 bits (group 64), relearning on the
# retain split evaluated at 1, 2 and 4 steps, a 3-shot prompt of general facts; control facts drawn from the
# candidates no split uses. For time (measured: ~90 s per method with generation, ~2.5x the teacher-forced
# cost) the new routes are judged teacher forced here; `unpact recover` and analyses/recovery_routes.py judge both.
ROUTE_BUDGET: dict[str, Any] = {"routes": ("emphasis", "quantize", "relearn", "in_context"), "bits": (8, 4),
                                "group_size": 64, "relearn_steps": (1, 2, 4), "relearn_lr": 1e-5, "shots": 3,
                                "n_control": 16, "criteria": ("teacher_forced",)}


class LazyBase:
    """The base model, loaded (and memoized) only when a stage needs it, and its Analysis (built once)."""

    def __init__(self, model: Any) -> None:
        self.spec = model if isinstance(model, str) else None
        self._subject = None if isinstance(model, str) else model.memoize() if model.memo is None else model
        self._analysis: Any = None
        self.route_cache: dict[Any, Any] = {}  # the quantised base, shared by every method's recovery routes
        self.pool: list[Any] = []  # the demo's candidate facts (the recovery routes draw their controls from it)

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

    def num(k: str) -> float | int:
        v = float(d[k])
        return int(v) if k == "n" or (k == "k" and v.is_integer()) else v  # a mean over draws keeps its fraction

    return {name: float(d["rate"]), **{f"{name}_{k}": num(k) for k in ("k", "n", "low", "high")}}


def format_rates(table: pd.DataFrame) -> pd.DataFrame:
    """For display only: each rate column as 'rate (k/n, low-high)' and each estimate with an interval (and
    p-value) as 'est (low to high, p=..)', their count/interval columns dropped."""
    out = table.copy()
    for name in [c for c in table.columns if f"{c}_n" in table.columns]:
        def fmt(r: Any, name: str = name) -> str:
            n = r[f"{name}_n"]
            if not n or n != n:
                return "n/a"
            k = r[f"{name}_k"]
            ks = f"{int(k)}" if float(k).is_integer() else f"{k:.1f}"
            return f"{r[name]:.2f} ({ks}/{int(n)}, {r[f'{name}_low']:.2f}-{r[f'{name}_high']:.2f})"

        out[name] = table.apply(fmt, axis=1)
        out = out.drop(columns=[f"{name}_{k}" for k in ("k", "n", "low", "high")])
    for name in [c for c in table.columns if f"{c}_low" in table.columns and f"{c}_n" not in table.columns]:
        def fmt_ci(r: Any, name: str = name) -> str:
            if r[name] != r[name]:
                return "n/a"
            p = f", p={r[f'{name}_p']:.2f}" if f"{name}_p" in table.columns else ""
            return f"{r[name]:+.2f} ({r[f'{name}_low']:+.2f} to {r[f'{name}_high']:+.2f}{p})"

        out[name] = table.apply(fmt_ci, axis=1)
        out = out.drop(columns=[c for c in (f"{name}_low", f"{name}_high", f"{name}_p") if c in out.columns])
    return out


def method_settings(method: str, steps: int | None, target: float) -> dict[str, Any]:
    """The demo's unlearning settings for a method: its tuned defaults, then the user's explicit ``steps``."""
    s = {"steps": 10, "target_forget_acc": target, "check_every": 1, "checkpoint_every": 0, **SETTINGS.get(method, {})}
    if steps is not None:  # explicit settings beat the demo's per-method defaults (Task Vector's 6 steps too)
        s["steps"] = steps
    return s


def unlearn_stage(lazy: LazyBase, method: str, forget: list, retain: list, out: Path, steps: int | None,
                  target: float, progress: bool = True, on_change: str = "recompute",
                  frontier: Callable[[str, Any, float], list[dict]] | None = None) -> tuple[Path, list[dict]]:
    """``OUT/checkpoints/METHOD`` trained with the demo's settings, and its frontier points (``frontier(name,
    subject, strength)`` at every snapshot along the trajectory); both reused while their stamp (model, data,
    settings, seed) is unchanged."""
    from unpact_mech.frontier import interpolated, snapshot_subject
    from unpact_mech.pipeline import stage
    from unpact_mech.unlearning import unlearn

    ckpt = out / "checkpoints" / method
    points_file = out / "checkpoints" / f"{method}.frontier.json"
    settings = method_settings(method, steps, target)
    stamp = _checkpoint_stamp(lazy, method, forget, retain, steps, target)

    def train() -> tuple[Path, list[dict]]:
        from unpact_mech.models import load_model, read_provenance

        base = lazy.get()
        points: list[dict] = []
        every = BUDGET["frontier"]["every"]

        def snap(step: int, model: Any) -> None:
            if frontier is not None and method != "task_vector" and step % every == 0:
                points.extend(frontier(f"{method}@{step}", snapshot_subject(model, base.tokenizer, f"{method}@{step}",
                                                                            base.source), float(step)))

        # no mid-run resume state for these short runs (saving it costs more than redoing them); the
        # finished checkpoint is the resume point of the demo
        path = unlearn(base, method, forget, retain, ckpt, progress=progress, overwrite=True, on_snapshot=snap,
                       **settings)
        prov = read_provenance(path)
        if frontier is not None and method == "task_vector":  # strengths: fractions of the calibrated scale
            a = prov.get("resolved", {}).get("tv_scale", settings.get("tv_scale", 1.0))
            for frac in BUDGET["tv_fractions"]:
                name = f"{method}@{frac:g}a"
                subject = load_model(str(path), dtype=base.dtype) if frac == 1 else interpolated(base, path, frac, name)
                points.extend(frontier(name, subject, float(frac * a)))
        elif frontier is not None and prov["steps"] % every:  # the last snapshot: the checkpoint itself
            points.extend(frontier(f"{method}@{prov['steps']}", load_model(str(path), dtype=base.dtype),
                                   float(prov["steps"])))
        atomic_write_json(points_file, points)
        return path, points

    return stage(f"unlearn {method}", out / "checkpoints" / f"{method}.stamp.json", stamp,
                 lambda: (ckpt / "unpact.json").exists() and points_file.exists(),
                 lambda: (ckpt, json.loads(points_file.read_text())), train, on_change)


def add_run_arguments(ap: Any, out: str) -> None:
    """The options every demo-like script shares (model, methods, output directory, steps, forget target)."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--out", default=out, help="output directory (reruns reuse its checkpoints)")
    ap.add_argument("--steps", type=int, default=None, help="max unlearning steps per method (default: 10, Task "
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
    stamp = make_stamp(checkpoint=_checkpoint_stamp(lazy, method, data["forget"], data["retain"], steps, target),
                       params=asdict(params), data={k: data_hash([_probe_key(p) for p in v]) for k, v in data.items()},
                       patch=patch, budget=BUDGET)
    row = stage(f"findings {method}", out / method / "result.stamp.json", stamp, res_file.exists,
                lambda: json.loads(res_file.read_text()),
                lambda: _measure(lazy, method, data, out, steps, target, patch, params, on_change), on_change)
    routes_stage(lazy, method, data, out, steps, target, params, stamp, on_change)
    return row


def routes_stage(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
                 params: Any, findings_stamp: dict[str, Any], on_change: str = "recompute") -> pd.DataFrame:
    """Recovery routes for one method (``OUT/METHOD/recovery_routes.csv``), stamped with the findings stage's
    stamp (the emphasis route reads its cached recovery tables) and :data:`ROUTE_BUDGET`."""
    from types import SimpleNamespace

    from unpact_mech.models import load_model
    from unpact_mech.pipeline import make_stamp, stage
    from unpact_mech.routes import recover

    f = out / method / "recovery_routes.csv"
    stamp = make_stamp(findings=findings_stamp, routes=ROUTE_BUDGET)

    def compute() -> pd.DataFrame:
        base = lazy.get()
        forget, retain, general = data["forget"], data["retain"], data["general"]
        an = lazy.analysis(forget + retain + general, params)
        ckpt, _ = unlearn_stage(lazy, method, forget, retain, out, steps, target, on_change=on_change)
        unl = load_model(str(ckpt), dtype=base.dtype, device=str(base.device)).memoize()
        emph = SimpleNamespace(rates=read_table(out / method / "recovery_rates.csv"),
                               sweep=read_table(out / method / "emphasis_sweep.csv"))
        shots = general[: ROUTE_BUDGET["shots"]]  # fewer when the general split is smaller
        table = recover(an, unl, forget, control_candidates(lazy.pool, data, ROUTE_BUDGET["n_control"]), retain,
                        shots, ROUTE_BUDGET["routes"],
                        options={"emphasis": {"result": emph},
                                 "quantize": {"bits": ROUTE_BUDGET["bits"], "group_size": ROUTE_BUDGET["group_size"],
                                              "criteria": ROUTE_BUDGET["criteria"]},
                                 "relearn": {"steps": ROUTE_BUDGET["relearn_steps"], "lr": ROUTE_BUDGET["relearn_lr"],
                                             "criteria": ROUTE_BUDGET["criteria"]},
                                 "in_context": {"shots": len(shots), "criteria": ROUTE_BUDGET["criteria"]}},
                        cache=lazy.route_cache)
        write_table(table, f)
        return table

    return stage(f"routes {method}", out / method / "recovery_routes.stamp.json", stamp, f.exists,
                 lambda: read_table(f), compute, on_change)


def control_candidates(pool: Sequence[Any], data: dict[str, list], n: int) -> list[Any]:
    """Candidates of the demo's pool that no split uses, in :func:`budget_order`: the routes' control facts (the
    routes keep those that neither model answers)."""
    used = {p.id for v in data.values() for p in v}
    return [p for p in budget_order(pool)[: BUDGET["candidates"]] if p.id not in used][:n]


def _checkpoint_stamp(lazy: LazyBase, method: str, forget: list, retain: list, steps: int | None,
                      target: float) -> dict[str, Any]:
    """What determines a method's checkpoint: model, method, its settings and the forget/retain data."""
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp

    return make_stamp(model=lazy.key, method=method, settings=method_settings(method, steps, target),
                      forget=data_hash([_probe_key(p) for p in forget]),
                      retain=data_hash([_probe_key(p) for p in retain]), frontier=BUDGET["frontier"])


def _measure(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
             patch: bool, params: Any, on_change: str) -> dict[str, Any]:
    """The body of :func:`method_stage`: unlearn (cached), then the three findings on the shared Analysis, under
    both correctness criteria, with the recovery controls and the frontier."""
    from unpact_mech.findings import CRITERIA, destruction, function_word_penalisation, recovery
    from unpact_mech.frontier import frontier_point
    from unpact_mech.keytokens import select_keytokens
    from unpact_mech.metrics import accuracy, bootstrap_mean
    from unpact_mech.models import load_model, read_provenance
    from unpact_mech.scoring import generation_table, probe_table
    from unpact_mech.tracking import compare, localise

    res_file = out / method / "result.json"
    base = lazy.get()
    forget, retain, general = data["forget"], data["retain"], data["general"]
    an = lazy.analysis(forget + retain + general, params)  # the base side, once for every method
    fr = BUDGET["frontier"]

    def point(name: str, subject: Any, strength: float) -> list[dict]:
        return frontier_point(an, subject, forget, retain + general, strength, fr["factors"], fr["routes"],
                              fr["n_draws"])

    ckpt, points = unlearn_stage(lazy, method, forget, retain, out, steps, target, on_change=on_change,
                                 frontier=point)
    t0 = time.perf_counter()
    prov = read_provenance(ckpt)
    unl = load_model(str(ckpt), dtype=base.dtype, device=str(base.device)).memoize()
    f_tps = an.probes.select(forget)
    f_tab = probe_table(unl, f_tps)
    f_gen = generation_table(unl, f_tps)
    cmp_f = compare(an, unl, forget)
    rec = recovery(an, unl, forget, FACTORS, n_draws=BUDGET["n_draws"], gen_factors=BUDGET["gen_factors"],
                   gen_prompt_styles=BUDGET["gen_prompt_styles"])
    drates = {c: destruction(an, unl, retain + general, criterion=c)[1] for c in CRITERIA}
    cmp_r = compare(an, unl, retain)  # token-level finding 3 on the retain split (the demo's time budget)
    fw = function_word_penalisation(cmp_r)
    loc = localise(an, unl, forget[:4] + retain[:2])
    d = out / method
    write_table(cmp_f.per_probe, d / "keyword_focus.csv")
    write_table(rec.sweep, d / "emphasis_sweep.csv")
    write_table(rec.rates, d / "recovery_rates.csv")
    write_table(rec.control, d / "recovery_control.csv")
    write_table(rec.eligibility, d / "eligibility.csv")
    write_table(pd.concat([f_tab.merge(f_gen[["probe_id", "generated", "rouge_l", "gen_correct"]], on="probe_id")]),
                d / "forget_answers.csv")
    write_table(fw, d / "function_words.csv")
    write_table(pd.DataFrame(points).assign(method=method), d / "frontier.csv")
    write_table(loc.heads, d / "heads.csv")
    write_table(loc.keytoken_route, d / "keytoken_route.csv")
    write_table(loc.logit_lens, d / "logit_lens.csv")
    examples = []
    for rb, ru in list(zip(cmp_f.base, cmp_f.unlearned))[:3]:
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
    rates, ctrl = rec.rates, rec.control
    fw_mean = fw.groupby("kind")["change"].mean().to_dict()
    focus: dict[str, float] = {}
    for col, name in (("focus_base", "focus_before"), ("focus_unlearned", "focus_after")):
        est, low, high = bootstrap_mean(list(cmp_f.per_probe[col].dropna()))
        focus.update({name: est, f"{name}_low": low, f"{name}_high": high})
    row: dict[str, Any] = {
        "method": method,
        "steps": prov["steps"],
        "stopped_at": prov.get("stopped_at"),
        "target_reached": prov.get("target_reached"),
        "tv_scale": prov.get("resolved", {}).get("tv_scale"),
        "train_s": prov.get("train_seconds"),
        **rate_columns("forget_acc", accuracy(list(f_tab.fact_top1))),
        **rate_columns("forget_acc_gen", accuracy(list(f_gen.gen_correct))),
        "forget_lp_before": float(cmp_f.per_probe.lp_base.mean()),
        "forget_lp_after": float(cmp_f.per_probe.lp_unlearned.mean()),
        **focus,
        "keytoken_jaccard": cmp_f.summary["mean_keytoken_jaccard"],
        "fw_change": fw_mean.get("function word", float("nan")),
        "keytoken_change": fw_mean.get("KeyToken", float("nan")),
        "content_change": fw_mean.get("content word", float("nan")),
        "route_summary": loc.summary,
        "examples": examples,
    }
    for crit, sfx in (("teacher_forced", ""), ("generation", "_gen")):
        for s_name in ("retain", "general"):
            if s_name in drates[crit]:
                row.update(rate_columns(f"destructive_{s_name}{sfx}", drates[crit][s_name]))
        best = rates[(rates.criterion == crit) & (rates.scope == "best")]
        for _, r in best.iterrows():
            tag = {"keytokens": "", "random": "_random", "function_words": "_fw"}[r.condition]
            row.update(rate_columns(f"recovery_{r.route}{tag}{sfx}", r))
        for _, c in ctrl[(ctrl.criterion == crit) & (ctrl.scope == "best")].iterrows():
            name = f"specific_{c.route}{sfx}"
            row.update({name: c.vs_random_diff, f"{name}_low": c.vs_random_diff_low,
                        f"{name}_high": c.vs_random_diff_high, f"{name}_p": c.vs_random_p})
    row["analysis_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(res_file, row)
    return row


def build_report(out: Path, rows: list[dict[str, Any]], data: dict[str, list], model: str) -> Path:
    """The self-contained ``report.html`` with figures saved as PNG beside it."""
    from unpact_mech.metrics import GEN_THRESHOLD
    from unpact_mech.report.figures import (
        bar,
        frontier,
        head_heatmap,
        interval_points,
        line_sweep,
        logit_lens_curves,
        patch_heatmap,
        save_figure,
    )
    from unpact_mech.report.html import comparison_block, image, write_report

    figs = out / "figures"
    intro = (f"<p>Base model <b>{model}</b>; {len(data['forget'])} forget, {len(data['retain'])} retain and "
             f"{len(data['general'])} general facts the base model answers (fact span top-1), drawn from the built-in "
             "facts. Every method unlearns the forget split until its fact top-1 accuracy is at most the target, or "
             "max steps (Task Vector: its negation scale is bisected to the target); <i>target_reached</i> says "
             "whether it got there.</p><p>Two correctness criteria. <b>Teacher forced</b>: every token of the fact "
             "span is the model's top-1 given the gold prefix. <b>Generation</b>: the greedy answer's ROUGE-L recall "
             f"of the fact span is at least {GEN_THRESHOLD}, or the span appears in it. Rates are k/n with a Wilson "
             "95% interval; recovery counts forget probes the base answers and the unlearned model does not, "
             "restored at any emphasis factor &gt; 1. Controls: the same emphasis on as many random non-KeyTokens "
             f"({BUDGET['n_draws']} seeded draws; k is the mean over draws, interval by bootstrap over probes) and on "
             "the prompt's function words. <i>specific</i> = KeyTokens minus random, paired per probe: mean, 95% "
             "paired bootstrap interval and sign-flip p-value.</p>")
    sections: list[tuple[str, Any]] = [
        ("Summary", intro),
        ("Summary table: teacher forced", format_rates(summary_table(rows, "teacher_forced").round(3))),
        ("Summary table: generation", format_rates(summary_table(rows, "generation").round(3))),
    ]
    rec_frames, fw_frames, front_frames, ctrl_frames = [], [], [], []
    for r in rows:
        m = r["method"]
        rates = read_table(out / m / "recovery_rates.csv")
        num = rates[(rates.scope == "factor") & ~rates.route.str.startswith("prompt")].copy()
        num["factor"] = num.factor.astype(float)
        rec_frames.append(num.assign(method=m))
        ctrl_frames.append(rates[rates.scope == "best"].assign(method=m))
        fw_frames.append(read_table(out / m / "function_words.csv").assign(method=m))
        if (out / m / "frontier.csv").exists():
            front_frames.append(read_table(out / m / "frontier.csv"))
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
    focus = pd.DataFrame([{"method": r["method"], "when": w, "focus": r[k], "low": r[f"{k}_low"],
                           "high": r[f"{k}_high"]} for r in rows
                          for w, k in (("before", "focus_before"), ("after", "focus_after"))])
    p0 = save_figure(interval_points(focus, "method", "focus", "low", "high", "when",
                                     "Finding 1: focus on the base KeyTokens (share of positive contribution)",
                                     "mean focus (95% bootstrap CI)"), figs / "focus.png")
    ctrl = pd.concat(ctrl_frames, ignore_index=True)
    ctrl["series"] = ctrl.criterion + " / " + ctrl.condition
    ctrl_figs = "".join(image(save_figure(interval_points(
        ctrl[ctrl.route == rt], "method", "rate", "low", "high", "series",
        f"Finding 2, route {rt}: recovery on KeyTokens vs controls (best over factors)", "recovery rate (95% CI)"),
        figs / f"control_{rt.replace(':', '_')}.png")) for rt in ("embed", "attention", "prompt:instruct"))
    rec = pd.concat(rec_frames, ignore_index=True)
    rec = rec[(rec.condition == "keytokens") & (rec.criterion == "teacher_forced")]
    p = save_figure(line_sweep(rec, "factor", "rate", "method", "Recovery rate over emphasis factor (KeyTokens, "
                               "teacher forced)", style="route"), figs / "recovery_curves.png")
    fw = pd.concat(fw_frames, ignore_index=True)
    q = save_figure(bar(fw, "method", "change", "kind", "Contribution change on retain probes, by word kind"),
                    figs / "function_words.png")
    frontier_html = "<p>No frontier points.</p>"
    if front_frames:
        fdf = pd.concat(front_frames, ignore_index=True)
        fr = BUDGET["frontier"]
        parts = []
        for route in fr["routes"]:
            g = fdf[(fdf.route == route) & (fdf.criterion == "teacher_forced")]
            parts.append(image(save_figure(frontier(g, title=f"Dilemma frontier ({route} x{fr['factors'][-1]:g}, "
                                                    "teacher forced)"), figs / f"frontier_{route}.png")))
        frontier_html = ("<p>Each point is one unlearning strength: the snapshots every "
                         f"{BUDGET['frontier']['every']} steps along a method's training and its last step, or "
                         "fractions of Task Vector's calibrated scale. Recovery is among the probes eligible at that "
                         "strength (n varies); the dashed line is the random-token control.</p>"
                         + "".join(parts) + "<div class='scroll'>"
                         + format_rates(fdf.drop(columns=["criterion"]).round(3)).to_html(index=False) + "</div>")
    sections.insert(3, ("Finding 1: focus on KeyTokens before and after", image(p0)))
    sections.insert(4, ("Finding 2: recovery by emphasis, with controls", ctrl_figs + image(p)))
    sections.insert(5, ("Finding 3: what unlearning penalised on retain probes", image(q)))
    sections.insert(6, ("The dilemma frontier", frontier_html))
    sections.insert(7, ("How superficial is the forgetting: recovery routes", routes_html(out, rows)))
    return write_report(out / "report.html", "unPact: the unlearning dilemma, mechanistically", sections)


def routes_html(out: Path, rows: list[dict[str, Any]]) -> str:
    """The recovery-route tables of every method, formatted with counts and intervals."""
    frames = [read_table(out / r["method"] / "recovery_routes.csv").assign(method=r["method"]) for r in rows
              if (out / r["method"] / "recovery_routes.csv").exists()]
    if not frames:
        return "<p>No recovery routes were run.</p>"
    t = route_table(pd.concat(frames, ignore_index=True))
    intro = ("<p>Forget probes the base model answers and the unlearned one does not (n), brought back without the "
             "forget set: emphasis (best factor), weights rounded to 8/4-bit integers (RTN, group 64), k fine-tuning "
             f"steps on the retain facts, a {ROUTE_BUDGET['shots']}-shot prompt of other facts. <i>control</i>: "
             "random non-KeyTokens for emphasis; for the other routes, facts neither model knew under the same "
             "treatment of the unlearned model. <i>excess</i> = recovered - control (95% interval). "
             "<i>base kept</i>: the same treatment of the base model still answers.</p>")
    return intro + "<div class='scroll'>" + t.to_html(index=False) + "</div>"


def route_table(t: pd.DataFrame) -> pd.DataFrame:
    """Readable route table: rates as 'rate (k/n, low-high)', excess as 'est (low to high)'."""

    def rate(r: Any, name: str) -> str:
        if not r[f"{name}_n"] == r[f"{name}_n"] or not r[f"{name}_n"]:
            return "-"
        return f"{r[name]:.2f} ({r[f'{name}_k']:g}/{int(r[f'{name}_n'])}, {r[f'{name}_low']:.2f}-{r[f'{name}_high']:.2f})"

    out = pd.DataFrame({
        "method": t["method"], "route": t["route"], "treatment": t["treatment"], "criterion": t["criterion"],
        "recovered": [rate(r, "recovered") for _, r in t.iterrows()],
        "control": [f"{c}: {rate(r, 'control')}" for c, (_, r) in zip(t.control_kind, t.iterrows())],
        "excess": [f"{r.excess:+.2f} ({r.excess_low:+.2f} to {r.excess_high:+.2f})" if r.excess == r.excess else "-"
                   for _, r in t.iterrows()],
        "base kept": [rate(r, "base_kept") if "base_kept_n" in t and r.base_kept == r.base_kept else "-"
                      for _, r in t.iterrows()],
    })
    return out


def html_pre(text: str) -> str:
    import html

    return f"<pre>{html.escape(text)}</pre>"


ROUTE_NAMES = ("embed", "attention", "prompt:repeat", "prompt:mark", "prompt:instruct")


def summary_columns(criterion: str) -> list[str]:
    """The summary table's columns under one criterion (``teacher_forced`` or ``generation``)."""
    sfx = "" if criterion == "teacher_forced" else "_gen"
    rec = [c for r in ROUTE_NAMES for c in (f"recovery_{r}{sfx}", f"recovery_{r}_random{sfx}", f"recovery_{r}_fw{sfx}",
                                          f"specific_{r}{sfx}")]
    return ["method", "steps", "target_reached", "tv_scale", "forget_acc", "forget_acc_gen", "forget_lp_before",
            "forget_lp_after", "focus_before", "focus_after", "keytoken_jaccard", *rec, f"destructive_retain{sfx}",
            f"destructive_general{sfx}", "fw_change", "keytoken_change", "content_change"]


def summary_table(rows: list[dict[str, Any]], criterion: str | None = None) -> pd.DataFrame:
    """One row per method: every number of the summary with its counts and interval columns (``criterion``:
    only that criterion's columns; None: both)."""
    # results read back from JSON hold null where a fresh run holds NaN (JSON has no NaN)
    df = pd.DataFrame(rows).replace({None: float("nan")}).infer_objects()
    names = list(dict.fromkeys(summary_columns("teacher_forced") + summary_columns("generation"))) \
        if criterion is None else summary_columns(criterion)
    cols = [x for c in names for x in (c, *(f"{c}_{k}" for k in ("k", "n", "low", "high", "p")))]
    return df[[c for c in cols if c in df.columns]]


def _probe_key(p: Any) -> list[Any]:
    return [p.id, p.prompt, p.answer, p.split, p.fact]


def budget_order(pool: Sequence[Any], seed: int = 0) -> list[Any]:
    """The pool in a seeded, domain-stratified order: shuffled within each domain, then domains taken in turn,
    so any prefix covers the domains evenly."""
    import random

    by_domain: dict[str, list[Any]] = {}
    for p in pool:
        by_domain.setdefault(str(p.domain), []).append(p)
    for name, items in by_domain.items():
        random.Random(f"{seed}:{name}").shuffle(items)
    order, queues = [], [list(v) for _, v in sorted(by_domain.items())]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def data_stage(lazy: LazyBase, out: Path, pool: Sequence[Any], known_only: bool,
               per_split: int | None, on_change: str = "recompute") -> tuple[dict[str, list], str]:
    """Forget/retain/general probes the base model knows (fact top-1) and its name, cached as ``OUT/data.json``.

    ``per_split``: the demo's budget, at most that many probes per split, drawn in :func:`budget_order` from the
    first ``BUDGET["candidates"]`` facts of that order (None: every known fact of the pool)."""
    from unpact_mech.models import data_hash
    from unpact_mech.pipeline import make_stamp, stage

    f = out / "data.json"
    stamp = make_stamp(model=lazy.key, pool=data_hash([_probe_key(p) for p in pool]), known_only=known_only,
                       per_split=per_split, candidates=BUDGET["candidates"])

    def compute() -> dict[str, Any]:
        cands = budget_order(pool)[: BUDGET["candidates"]] if per_split else list(pool)
        known = _known(lazy.get(), cands) if known_only else cands
        ids = {s: [p.id for p in known if p.split == s][:per_split] for s in ("forget", "retain", "general")}
        cached = {"model_name": lazy.get().name, "ids": ids, "candidates": len(cands), "known": len(known)}
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
             steps: int | None = None, target: float = 0.25, patch: bool = True, per_split: int | None = BUDGET["per_split"],
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
    lazy.pool = pool
    if on_keytokens is not None:
        kp = list(keytoken_probes) if keytoken_probes is not None else pool[:12]
        on_keytokens(keytoken_stage(lazy, out, kp, params, on_change))
    data, model_name = data_stage(lazy, out, pool, known_only, per_split, on_change)
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
