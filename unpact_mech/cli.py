"""``unpact`` command line: thin wrappers that parse arguments, call the library and print or write tables."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.errors import UnpactError
from unpact_mech.keytokens import ALPHA, BETA, KeyTokenParams, select_keytokens

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


def _keytoken_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"eq.4 threshold on normalised contribution ({ALPHA})")
    p.add_argument("--beta", type=int, default=BETA, help=f"eq.3: keep all positives if fewer than beta ({BETA})")
    p.add_argument("--max-keytokens", type=int, default=None, help="cap N on KeyTokens per probe (none)")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "plain"], help="prompt format")


def _model_args(p: argparse.ArgumentParser) -> None:
    """How every command that loads a model loads it (declared once)."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (bfloat16/float16 halve memory; scores are float64 either way)")
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: the CPU)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (RISK: it runs with your permissions)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (RISK: unpickling can run code); safetensors needs no flag")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused otherwise)")


def _check_out(a: argparse.Namespace, kind: str = "file", inputs: Sequence[str] = ()) -> Path:
    """Check ``--out`` before any work (suffix for tables, writable, not an input, no silent overwrite)."""
    from unpact_mech.io import TABLE_SUFFIXES, check_output

    return check_output(a.out, kind, a.overwrite, TABLE_SUFFIXES if kind == "file" else (), inputs)


def _load(a: argparse.Namespace, spec: str) -> Any:
    """``load_model(spec)`` with the options of :func:`_model_args`."""
    from unpact_mech.models import load_model

    return load_model(spec, verbose=True, dtype=a.dtype, device=a.device, trust_remote_code=a.trust_remote_code,
                      allow_pickle=a.allow_pickle)


def _params(a: argparse.Namespace) -> KeyTokenParams:
    return KeyTokenParams(alpha=a.alpha, beta=a.beta, max_keytokens=a.max_keytokens)


def _load_probes_arg(spec: str, split: str | None = None) -> list[Any]:
    """A JSON-lines file, or a registered benchmark name (``facts``, ``facts:forget``)."""
    from unpact_mech.data import BENCHMARKS, load_benchmark
    from unpact_mech.probes import load_probes

    name, _, sp = spec.partition(":")
    if name in BENCHMARKS and not Path(spec).exists():
        return load_benchmark(name, split=sp or split)
    return load_probes(spec)


def _base_and_unlearned(a: argparse.Namespace) -> tuple[list[Any], Any, Any]:
    """Probes (--probes), base model (--base) and unlearned model (--unlearned) of a comparison command."""
    probes = _load_probes_arg(a.probes)
    return probes, _load(a, a.base), _load(a, a.unlearned)


def _print_df(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_colwidth", 80, "display.width", 200, "display.max_rows", 500):
        print(df.to_string(index=False))


@command("attribute")
def cmd_attribute(a: argparse.Namespace) -> int:
    from unpact_mech.attribution import attribute
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.sharding import parse_shard, run_key, take_shard, write_part

    probes, shard = _probes_from_args(a), parse_shard(a.shard)
    if a.out:
        _check_out(a)
    subject = _load(a, a.model)
    key = run_key("attribute", {"model": a.model, "method": a.method, "format": a.format}, [p.id for p in probes])
    tps = tokenize_probes(subject, take_shard(probes, shard), a.format)
    table = attribute(subject, tps, method=a.method, progress=True)
    if a.out:
        write_part(table, a.out, key, shard)
        print(f"wrote {a.out}")
    params = _params(a)
    for tp in tps:
        sub = table[table.probe_id == tp.probe.id]
        keys = {int(sub.position.iloc[i]) for i in select_keytokens(sub.score.to_numpy(), params)}
        print(f"\n{tp.probe.id}: {tp.probe.prompt!r} -> {tp.probe.answer!r}  [{a.method}]")
        for pos, tok, score in zip(sub.position, sub.token, sub.score):
            mark = "  <- KeyToken" if int(pos) in keys else ""
            print(f"  {int(pos):4d} {tok!r:>16} {score:+.4f}{mark}")
    return 0


@command("compare")
def cmd_compare(a: argparse.Namespace) -> int:
    from unpact_mech.io import atomic_write_json, write_table
    from unpact_mech.tracking import compare

    out = _check_out(a)
    probes, base, unl = _base_and_unlearned(a)
    result = compare(base, unl, probes, _params(a), fmt=a.format, progress=True)
    write_table(result.per_probe, out)
    atomic_write_json(out.with_suffix(".summary.json"), result.summary)
    _print_df(result.per_probe[["probe_id", "keytokens_base", "keytokens_unlearned", "focus_base",
                                "focus_unlearned", "lp_base", "lp_unlearned"]].round(3))
    print("\nsummary:", json.dumps({k: round(v, 4) for k, v in result.summary.items()}, indent=1))
    print(f"wrote {out}")
    return 0


@command("demo")
def cmd_demo(a: argparse.Namespace) -> int:
    from unpact_mech.data import load_benchmark
    from unpact_mech.demo import LazyBase, keytoken_stage, run_demo

    kprobes = load_benchmark("facts", split=a.split)[: a.n]

    def show(table: pd.DataFrame) -> None:
        print(f"\nKeyTokens of {a.model} (leave-one-out, alpha={a.alpha}, beta={a.beta}):")
        _print_df(table)

    if a.keytokens_only:
        show(keytoken_stage(LazyBase(a.model), Path(a.out), kprobes, _params(a)))
        return 0
    table = run_demo(_load(a, a.model) if a.dtype != "float32" or a.device else a.model, a.methods.split(","),
                     a.out, steps=a.steps, target=a.target, on_keytokens=show, keytoken_probes=kprobes,
                     params=_params(a), on_change=a.on_change)
    print("\nSummary (one row per unlearning method):")
    from unpact_mech.demo import format_rates

    _print_df(format_rates(table.round(3)))
    return 0


def _mech_table(a: argparse.Namespace) -> Any:
    """Shared body of ``unpact dla`` / ``unpact paths``: load, shard, attribute, write; returns the table."""
    from unpact_mech.attribution import attribute
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.sharding import parse_shard, run_key, take_shard, write_part

    probes, shard = _probes_from_args(a), parse_shard(a.shard)
    _check_out(a)
    subject = _load(a, a.model)
    key = run_key(a.cmd, {"model": a.model, "target": a.target, "format": a.format}, [p.id for p in probes])
    tps = tokenize_probes(subject, take_shard(probes, shard), a.format)
    table = attribute(subject, tps, method=a.cmd, target=a.target, progress=True)
    write_part(table, a.out, key, shard)
    return table


@command("dla")
def cmd_dla(a: argparse.Namespace) -> int:
    from unpact_mech.attribution.dla import average_over_answer

    table = _mech_table(a)
    avg = average_over_answer(table)
    top = avg.reindex(avg.score.abs().sort_values(ascending=False).index).head(a.top)
    _print_df(top[["probe_id", "component", "layer", "head", "score"]].round(4))
    print(f"wrote {a.out} ({len(table)} rows)")
    return 0


@command("paths")
def cmd_paths(a: argparse.Namespace) -> int:
    table = _mech_table(a)
    per_token = table.groupby(["probe_id", "position", "token"], sort=False)["score"].sum().reset_index()
    _print_df(per_token.round(4))
    print(f"wrote {a.out} ({len(table)} rows)")
    return 0


@command("localise")
def cmd_localise(a: argparse.Namespace) -> int:
    from unpact_mech.io import write_table
    from unpact_mech.report.figures import head_heatmap, logit_lens_curves, save_figure, source_heatmap
    from unpact_mech.tracking import localise

    out = _check_out(a, "dir")
    probes, base, unl = _base_and_unlearned(a)
    loc = localise(base, unl, probes, _params(a), fmt=a.format, top_k=a.top, progress=True)
    write_table(loc.heads, out / "heads.csv")
    write_table(loc.layer_source, out / "layer_source.csv")
    write_table(loc.keytoken_route, out / "keytoken_route.csv")
    write_table(loc.logit_lens, out / "logit_lens.csv")
    for split in sorted(loc.heads.split.unique()):
        save_figure(head_heatmap(loc.heads, "change", split, f"head DLA change ({split})"), out / f"heads_{split}.png")
    first = loc.layer_source.probe_id.iloc[0]
    save_figure(source_heatmap(loc.layer_source, first), out / f"layer_source_{first}.png")
    save_figure(logit_lens_curves(loc.logit_lens), out / "logit_lens.png")
    _print_df(loc.keytoken_route.groupby("split").head(a.top).round(4))
    print("\n" + loc.summary)
    print(f"wrote tables and figures to {out}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UnpactError(f"expected comma-separated numbers, got {text!r}") from err


@command("unlearn")
def cmd_unlearn(a: argparse.Namespace) -> int:
    from unpact_mech.models import read_provenance
    from unpact_mech.unlearning import resolve_config, unlearn

    forget = _load_probes_arg(a.forget)
    retain = _load_probes_arg(a.retain) if a.retain else []
    over = {k: v for k, v in (("steps", a.steps), ("lr", a.lr), ("seed", a.seed), ("batch_size", a.batch_size),
                              ("target_forget_acc", a.target_forget_acc), ("loss_convention", a.loss_convention))
            if v is not None}
    resolve_config(a.method, bool(retain), fmt=a.format, **over)  # settings and retain need, before the load
    _check_out(a, "dir")
    subject = _load(a, a.model)
    out = unlearn(subject, a.method, forget, retain, a.out, fmt=a.format, overwrite=a.overwrite, **over)
    prov = read_provenance(out)
    print(json.dumps({k: prov[k] for k in ("method", "steps", "stopped_at", "forget_fact_acc_before",
                                           "forget_fact_acc_after", "train_seconds", "final_losses")}, indent=1))
    print(f"wrote {out}")
    return 0


@command("emphasize")
def cmd_emphasize(a: argparse.Namespace) -> int:
    from unpact_mech.emphasis import ROUTES
    from unpact_mech.errors import check_finite_factor
    from unpact_mech.findings import destruction, recovery
    from unpact_mech.io import write_table

    factors = _floats(a.factors) if a.sweep else [1.0, _floats(a.factors)[-1]]
    for f in factors:
        check_finite_factor(f)
    routes = a.routes.split(",")
    if not set(routes) <= set(ROUTES):
        raise UnpactError(f"unknown route(s) {sorted(set(routes) - set(ROUTES))}: use {','.join(ROUTES)}")
    from unpact_mech.findings import CRITERIA

    bad = sorted(set(a.criteria.split(",")) - set(CRITERIA))
    if bad or a.draws < 1:
        raise UnpactError(f"unknown --criteria {bad}: use {','.join(CRITERIA)}" if bad else "--draws must be >= 1")
    out = _check_out(a, "dir")
    probes, base, unl = _base_and_unlearned(a)
    forget = [p for p in probes if p.split == "forget"] or probes
    criteria = a.criteria.split(",")
    res = recovery(base, unl, forget, factors, routes, params=_params(a), fmt=a.format, criteria=criteria,
                   n_draws=a.draws)
    write_table(res.sweep, out / "emphasis_sweep.csv")
    write_table(res.rates, out / "recovery_rates.csv")
    write_table(res.control, out / "recovery_control.csv")
    write_table(res.eligibility, out / "eligibility.csv")
    print("recovery rate (forget probes the base answers and the unlearned model does not; controls: random "
          "non-KeyTokens and function words):")
    _print_df(res.rates[["criterion", "condition", "route", "scope", "factor", "k", "n", "rate", "low", "high"]].round(3))
    print("KeyToken-specific recovery (KeyTokens - random, paired per probe; 95% bootstrap CI, sign-flip p):")
    _print_df(res.control[["criterion", "route", "scope", "factor", "vs_random_n", "vs_random_diff",
                           "vs_random_diff_low", "vs_random_diff_high", "vs_random_p"]].round(3))
    others = [p for p in probes if p.split != "forget"]
    for crit in criteria if others else []:
        _, drates = destruction(base, unl, others, a.format, criterion=crit)
        for split, r in drates.items():
            print(f"destructive rate ({split}, {crit}): {r}")
    print(f"wrote {out}")
    return 0


@command("recover")
def cmd_recover(a: argparse.Namespace) -> int:
    from unpact_mech.analysis import Analysis
    from unpact_mech.findings import CRITERIA
    from unpact_mech.io import write_table
    from unpact_mech.routes import RECOVERY_ROUTES, recover, route_data

    routes, criteria = a.routes.split(","), a.criteria.split(",")
    bad = sorted(set(routes) - set(RECOVERY_ROUTES)) + sorted(set(criteria) - set(CRITERIA))
    if bad:
        raise UnpactError(f"unknown --routes/--criteria {bad}: routes {','.join(RECOVERY_ROUTES)}; criteria "
                          f"{','.join(CRITERIA)}")
    bits, steps = [int(b) for b in a.bits.split(",")], [int(k) for k in a.relearn_steps.split(",")]
    if a.n < 1 or a.shots < 1 or min(steps) < 1 or not all(2 <= b <= 16 for b in bits):
        raise UnpactError("--n, --shots and --relearn-steps must be >= 1 and --bits in 2..16")
    out = _check_out(a, "dir")
    probes, base, unl = _base_and_unlearned(a)
    forget, retain, shots, unknown = route_data(probes, a.n, a.shots, a.n_control)
    options = {"quantize": {"bits": bits}, "relearn": {"steps": steps, "lr": a.relearn_lr},
               "in_context": {"shots": a.shots}, "emphasis": {"factors": (1.0, 8.0), "n_draws": a.draws}}
    table = recover(Analysis(base, forget, _params(a), a.format), unl, forget, unknown, retain, shots,
                    routes, criteria, options, progress=True)
    write_table(table, out / "recovery_routes.csv")
    print("how superficial is the forgetting: forget probes the base answers and the unlearned model does not, "
          "brought back by each route; control = what the same treatment gives without forgotten knowledge")
    _print_df(table[["route", "treatment", "criterion", "n", "recovered_k", "recovered", "control_kind", "control_k",
                     "control_n", "excess", "excess_low", "excess_high", "base_kept"]].round(3))
    print(f"wrote {out}")
    return 0


@command("patch")
def cmd_patch(a: argparse.Namespace) -> int:
    from unpact_mech.io import write_table
    from unpact_mech.patching import DIRECTIONS, KINDS, PATCH_METHODS, patch
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.report.figures import patch_heatmap, save_figure

    bad = [k for k in a.kinds.split(",") if k not in KINDS] + [d for d in a.direction.split(",") if d not in DIRECTIONS]
    bad += [a.method] if a.method not in PATCH_METHODS else []
    if bad or a.n < 1 or a.layer_step < 1:
        raise UnpactError(f"bad --kinds/--direction/--method {bad} (kinds: {sorted(KINDS)}; directions: "
                          f"{list(DIRECTIONS)}; methods: {list(PATCH_METHODS)})" if bad
                          else "--n and --layer-step must be >= 1")
    out = _check_out(a, "dir")
    probes, base, unl = _base_and_unlearned(a)
    probes = probes[: a.n]
    layers = list(range(0, base.cfg.n_layers, a.layer_step))
    frames, heads = [], []
    for d in a.direction.split(","):
        for tp in tokenize_probes(base, probes, a.format):
            pos_t, head_t = patch(base, unl, tp, a.method, a.kinds.split(","), layers, direction=d)
            frames.append(pos_t)
            heads.append(head_t)
    pos, hd = pd.concat(frames, ignore_index=True), pd.concat(heads, ignore_index=True)
    write_table(pos, out / "patch_positions.csv")
    write_table(hd, out / "patch_heads.csv")
    for d, g in pos.groupby("direction"):
        first = g.probe_id.iloc[0]
        save_figure(patch_heatmap(g[g.probe_id == first]), out / f"patch_{first}_{d.replace('->', '_to_')}.png")
    best = pos.sort_values("restoration", ascending=False).groupby("direction").head(5)
    _print_df(best[["direction", "probe_id", "kind", "layer", "position", "token", "restoration"]].round(3))
    print(f"wrote {out}")
    return 0


@command("merge")
def cmd_merge(a: argparse.Namespace) -> int:
    from unpact_mech.sharding import merge_parts

    _check_out(a, inputs=a.parts)
    merged = merge_parts(a.parts, a.out)
    print(f"merged {len(a.parts)} parts, {len(merged)} rows -> {a.out}")
    return 0


@command("data")
def cmd_data(a: argparse.Namespace) -> int:
    from unpact_mech.data import BENCHMARKS, load_benchmark
    from unpact_mech.probes import Probe

    if a.action == "list":
        for name, fn in sorted(BENCHMARKS.items()):
            print(f"{name:12s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not a.name:
        raise UnpactError("unpact data show: give a benchmark NAME (see `unpact data list`)")
    items = load_benchmark(a.name, subset=a.subset, split=a.split, source=a.source)
    where = " ".join(f"{k}={v}" for k, v in (("subset", a.subset), ("split", a.split), ("source", a.source)) if v)
    print(f"{a.name}{' ' + where if where else ''}: {len(items)} items")
    for it in items[: a.n]:
        print("  " + (json.dumps(it.to_dict())[:300] if isinstance(it, Probe) else repr(str(it)[:300])))
    return 0


def _probes_from_args(a: argparse.Namespace) -> list[Any]:
    from unpact_mech.probes import Probe

    if a.probes:
        return _load_probes_arg(a.probes)
    if not a.prompt or not a.answer:
        raise UnpactError("give --prompt and --answer, or --probes FILE")
    return [Probe(id="cli", prompt=a.prompt, answer=a.answer)]


def build_parser() -> argparse.ArgumentParser:
    from unpact_mech.attribution import ATTRIBUTION_METHODS

    p = argparse.ArgumentParser(prog="unpact", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("attribute", help="contribution of each prompt token to the answer; KeyTokens marked")
    s.add_argument("--model", default="smollm2-135m", help="built-in name, local HF dir or hub id")
    s.add_argument("--prompt", help="the question")
    s.add_argument("--answer", help="the answer whose log-prob is attributed")
    s.add_argument("--probes", help="JSON-lines probe file or benchmark name (instead of --prompt/--answer)")
    s.add_argument("--method", default="loo", choices=sorted(ATTRIBUTION_METHODS))
    s.add_argument("--out", help="write the table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("--shard", help="i/n: only every n-th probe from the i-th (merge parts with `unpact merge`)")
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("compare", help="base vs unlearned: KeyTokens, focus, contribution change per probe")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True, help="JSON-lines probe file or benchmark name, e.g. facts:forget")
    s.add_argument("--out", default="compare.csv", help="per-probe table (.csv or .parquet)")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    from unpact_mech.demo import add_run_arguments

    s = sub.add_parser("demo", help="the main job on the embedded default model")
    add_run_arguments(s, "unpact_out/demo")
    s.add_argument("--split", default=None)
    s.add_argument("--n", type=int, default=12, help="number of built-in probes in the KeyToken table")
    s.add_argument("--keytokens-only", action="store_true", help="only print the KeyToken table")
    _keytoken_args(s)
    _model_args(s)

    for name, help_ in (("dla", "direct logit attribution per head, MLP and embedding"),
                        ("paths", "attention paths: each head's contribution split by source token")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model", default="smollm2-135m")
        s.add_argument("--prompt")
        s.add_argument("--answer")
        s.add_argument("--probes", help="JSON-lines probe file or benchmark name")
        s.add_argument("--target", default="logit", choices=["logit", "logit_diff"])
        s.add_argument("--out", default=f"{name}.csv", help="table (.csv or .parquet)")
        _output_args(s)
        s.add_argument("--top", type=int, default=20, help="rows to print")
        s.add_argument("--shard", help="i/n: only every n-th probe from the i-th (merge parts with `unpact merge`)")
        _keytoken_args(s)
        _model_args(s)

    s = sub.add_parser("localise", help="where base -> unlearned changed: heads, layers x source tokens")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--out", default="localise", help="output directory for tables and figures")
    _output_args(s)
    s.add_argument("--top", type=int, default=5)
    _keytoken_args(s)
    _model_args(s)

    from unpact_mech.unlearning import METHODS

    s = sub.add_parser("unlearn", help="unlearn a forget set from a model; methods: " + ", ".join(sorted(METHODS)))
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--method", required=True, choices=sorted(METHODS))
    s.add_argument("--forget", required=True, help="JSON-lines probes or benchmark name, e.g. facts:forget")
    s.add_argument("--retain", help="JSON-lines probes or benchmark name, e.g. facts:retain")
    s.add_argument("--out", required=True, help="checkpoint directory")
    _output_args(s)
    s.add_argument("--steps", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--target-forget-acc", type=float, help="stop once forget fact top-1 accuracy <= this")
    s.add_argument("--loss-convention", choices=["open_unlearning", "unpact_v1"],
                   help="GA/GD/KL reductions: open-unlearning's (default) or this toolkit's first forms")
    s.add_argument("--format", default="auto", choices=["auto", "chat", "plain"])
    _model_args(s)

    s = sub.add_parser("emphasize", help="finding 2: recovery by emphasising KeyTokens (embed, attention, prompt)")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--factors", default="1,2,4,8", help="emphasis factors (with --sweep; else the last only)")
    s.add_argument("--sweep", action="store_true", help="score every factor, not only the largest")
    s.add_argument("--routes", default="embed,attention")
    s.add_argument("--criteria", default="teacher_forced,generation",
                   help="correctness criteria: teacher_forced (fact span top-1), generation (greedy answer, ROUGE-L)")
    s.add_argument("--draws", type=int, default=3, help="seeded random-token control draws per probe")
    s.add_argument("--out", default="emphasis")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("recover", help="recovery routes: emphasis, quantisation, relearning, in-context, with controls")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True, help="probes with splits: forget (tested), retain (relearning data), "
                   "general (few-shot examples, then control facts)")
    s.add_argument("--routes", default="emphasis,quantize,relearn,in_context")
    s.add_argument("--criteria", default="teacher_forced,generation")
    s.add_argument("--n", type=int, default=12, help="forget probes (and retain probes for relearning)")
    s.add_argument("--n-control", type=int, default=24, help="general probes offered as control facts")
    s.add_argument("--bits", default="8,4", help="quantisation bit widths (RTN, group 64)")
    s.add_argument("--relearn-steps", default="1,2,4", help="relearning steps k at which to evaluate")
    s.add_argument("--relearn-lr", type=float, default=1e-5)
    s.add_argument("--shots", type=int, default=3, help="few-shot examples for the in-context route")
    s.add_argument("--draws", type=int, default=3, help="random-token control draws for emphasis")
    s.add_argument("--out", default="recovery")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("patch", help="activation patching base <-> unlearned per layer/position and per head")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--n", type=int, default=1, help="number of probes")
    s.add_argument("--kinds", default="resid_pre,attn_out,mlp_out")
    s.add_argument("--layer-step", type=int, default=1, help="patch every k-th layer")
    s.add_argument("--direction", default="base->unlearned", help="base->unlearned, unlearned->base or both (comma)")
    s.add_argument("--method", default="exact", help="exact (one forward per site) or atp (attribution patching: "
                   "first-order estimate from one forward of each model and one backward)")
    s.add_argument("--out", default="patching")
    _output_args(s)
    s.add_argument("--format", default="auto", choices=["auto", "chat", "plain"])
    _model_args(s)

    s = sub.add_parser("merge", help="merge the partial tables of a sharded run (order-independent)")
    s.add_argument("out", help="merged table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("parts", nargs="+", help="partial tables written with --shard i/n")

    s = sub.add_parser("data", help="list benchmarks or show a few rows of one")
    s.add_argument("action", choices=["list", "show"])
    s.add_argument("name", nargs="?")
    s.add_argument("--subset")
    s.add_argument("--split")
    s.add_argument("--source", help="local json/jsonl/parquet file in the dataset's schema (offline)")
    s.add_argument("--n", type=int, default=3, help="rows to print")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors the user can fix (``UnpactError``, unreadable files) print one line and return 2
    (``--debug``: with the traceback); anything else is an internal error and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        if "alpha" in vars(args):
            _params(args)  # KeyToken parameters are checked before any model loads
        return COMMANDS[args.cmd](args)
    except (UnpactError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        msg = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else str(err)
        print(f"unpact {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
