"""The commands of ``unpact``: thin wrappers that call the library and print or write tables. Library imports sit
inside the commands, so that ``unpact --help`` and argument errors come back at once."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.cli import plan, scale
from unpact_mech.cli.scale import FAILED, load_kwargs, loads_beyond_config, uses_ray
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.registry import Registry
from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens

COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("command")


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``fn(args) -> exit code`` as the handler of ``unpact NAME``."""
    return COMMANDS.decorator(name)


def _check_out(a: argparse.Namespace, kind: str = "file", inputs: Sequence[str] = ()) -> Path:
    """Check ``--out`` before any work (suffix for tables, writable, not an input, no silent overwrite)."""
    from unpact_mech.core.io import TABLE_SUFFIXES, check_output

    return check_output(a.out, kind, a.overwrite, TABLE_SUFFIXES if kind == "file" else (), inputs)


def _load(a: argparse.Namespace, spec: str) -> Any:
    """``load_model(spec)`` with the options of :func:`_model_args`."""
    from unpact_mech.model.loading import load_model

    return load_model(spec, verbose=True, **load_kwargs(a))


def _params(a: argparse.Namespace) -> KeyTokenParams:
    return KeyTokenParams(alpha=a.alpha, beta=a.beta, max_keytokens=a.max_keytokens)


def _load_probes_arg(spec: str, split: str | None = None) -> list[Any]:
    """:func:`unpact_mech.evals.loaders.load_probe_spec`: a probe file or a benchmark spec."""
    from unpact_mech.evals.loaders import load_probe_spec

    return load_probe_spec(spec, split)


def _same_path(x: str, y: str) -> bool:
    return x == y or (Path(x).expanduser().exists() and Path(x).expanduser().resolve() == Path(y).expanduser().resolve())


def _models(a: argparse.Namespace, probes: Sequence[Any] = ()) -> tuple[Any, Any]:
    """The base (--base) and unlearned (--unlearned) models; their on-disk tokenizers compared and ``probes``
    checked against their contexts first."""
    from unpact_mech.model.loading import check_pair_before_loading

    plan.build_builtins(a, [a.base, a.unlearned])  # a cold built-in's tokenizer on disk for the pair check
    read = check_pair_before_loading(a.base, a.unlearned, a.trust_remote_code)
    plan.check_inputs(a, [a.base, a.unlearned], probes, read)
    return _load(a, a.base), _load(a, a.unlearned)


def _base_and_unlearned(a: argparse.Namespace) -> tuple[list[Any], Any, Any]:
    """Probes (--probes), base model (--base) and unlearned model (--unlearned) of a comparison command."""
    probes = _load_probes_arg(a.probes)
    return (probes, *_models(a, probes))


def _print_df(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_colwidth", 80, "display.width", 200, "display.max_rows", 500):
        print(df.to_string(index=False))


@command("attribute")
def cmd_attribute(a: argparse.Namespace) -> int:
    from unpact_mech.attribution import attribute, method_info
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.runtime.sharding import run_key, take_shard, write_part

    probes, shard = _probes_from_args(a), a.shard
    if a.out:
        _check_out(a)
    key = run_key("attribute", {"model": a.model, "method": a.method, "format": a.format}, [p.id for p in probes])
    probes, failed = take_shard(probes, shard), scale.no_failures()
    if uses_ray(a):
        tables, failed = scale.run(a, "attribute", {"model": a.model, "method": a.method, "format": a.format},
                                   [a.model], scale.attribute_job(a.method, a.format), probes)
        table = tables.get("table", pd.DataFrame(columns=["probe_id"]))
    else:
        plan.check_inputs(a, [a.model], probes)  # (on Ray a probe that does not fit is recorded as failed, the rest run)
        subject = _load(a, a.model)
        table = attribute(subject, tokenize_probes(subject, probes, a.format), method=a.method, progress=True)
    if a.out:
        write_part(table, a.out, key, shard)
        print(f"wrote {a.out}")
    params, done = _params(a), [p for p in probes if p.id in set(table.probe_id)]
    if method_info(a.method).level != "token":  # KeyTokens are prompt tokens: heads and MLPs are listed as they are
        for p in done:
            sub = table[table.probe_id == p.id]
            top = sub.reindex(sub.score.abs().sort_values(ascending=False).index).head(20)
            print(f"\n{p.id}: {p.prompt!r} -> {p.answer!r}  [{a.method}: strongest "
                  "components; KeyTokens are selected only by token-level methods]")
            print(top[["position", "token", "component", "layer", "head", "score"]].round(4).to_string(index=False))
        return FAILED if failed else 0
    for p in done:
        sub = table[table.probe_id == p.id]
        keys = {int(sub.position.iloc[i]) for i in select_keytokens(sub.score.to_numpy(), params)}
        print(f"\n{p.id}: {p.prompt!r} -> {p.answer!r}  [{a.method}]")
        for pos, tok, score in zip(sub.position, sub.token, sub.score):
            mark = "  <- KeyToken" if int(pos) in keys else ""
            print(f"  {int(pos):4d} {tok!r:>16} {score:+.4f}{mark}")
    return FAILED if failed else 0


@command("compare")
def cmd_compare(a: argparse.Namespace) -> int:
    from unpact_mech.analysis.compare import compare, summarise
    from unpact_mech.core.io import atomic_write_json, write_table

    out, failed = _check_out(a), scale.no_failures()
    if uses_ray(a):
        opts = {"base": a.base, "unlearned": a.unlearned, "alpha": a.alpha, "beta": a.beta,
                "max_keytokens": a.max_keytokens, "format": a.format}
        tables, failed = scale.run(a, "compare", opts, [a.base, a.unlearned], scale.compare_job(a),
                                   _load_probes_arg(a.probes))
        per_probe = tables["per_probe"]
        summary = summarise(per_probe)
    else:
        probes, base, unl = _base_and_unlearned(a)
        result = compare(base, unl, probes, _params(a), fmt=a.format, progress=True)
        per_probe, summary = result.per_probe, result.summary
    write_table(per_probe, out)
    atomic_write_json(out.with_suffix(".summary.json"), summary)
    _print_df(per_probe[["probe_id", "keytokens_base", "keytokens_unlearned", "focus_base",
                         "focus_unlearned", "lp_base", "lp_unlearned"]].round(3))
    print("\nsummary:", json.dumps({k: round(v, 4) for k, v in summary.items()}, indent=1))
    print(f"wrote {out}")
    return FAILED if failed else 0


@command("demo")
def cmd_demo(a: argparse.Namespace) -> int:
    from unpact_mech.core.io import check_output
    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.report.tables import format_rates
    from unpact_mech.study import LazyBase, keytoken_stage
    from unpact_mech.study.config import Study, StudyConfig

    kprobes = load_benchmark("facts", split=a.split)[: a.n]

    def show(table: pd.DataFrame) -> None:
        print(f"\nKeyTokens of {a.model} (leave-one-out, alpha={a.alpha}, beta={a.beta}):")
        _print_df(table)

    if a.keytokens_only:  # (the full demo's run_demo checks OUT itself, before any stage)
        check_output(a.out, kind="dir", overwrite=True)  # a directory the demo resumes in: refused before any work
        base = _load(a, a.model) if "chat" in load_kwargs(a) else a.model  # chat prompts rendered as asked
        show(keytoken_stage(LazyBase(base), Path(a.out), kprobes, _params(a)))
        return 0
    # the demo is a preset study: the built-in facts, the paper's six methods, the budgets of experiments.settings;
    # it writes OUT/study.json, which `unpact study --config` reruns
    cfg = StudyConfig(model=a.model, methods=tuple(a.methods), probes=("facts",), out=a.out, steps=a.steps,
                      target=a.target, keytokens=_params(a), on_change=a.on_change, dtype=a.dtype, device=a.device,
                      system_prompt=a.system_prompt, date_string=a.date_string)
    plan.check_study(a, cfg)  # --plan prints the stages' costs and stops; a demo that cannot fit is refused
    loaded = _load(a, a.model) if loads_beyond_config(a) else None
    table = Study(cfg).run(loaded, on_keytokens=show, keytoken_probes=kprobes).summary
    print("\nSummary (one row per unlearning method):")
    _print_df(format_rates(table).round(3))  # rates rounded once, by format_rates
    return 0


def _mech_table(a: argparse.Namespace) -> Any:
    """Shared body of ``unpact dla`` / ``unpact paths``: load, shard, attribute, write; returns the table."""
    from unpact_mech.attribution import attribute
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.runtime.sharding import run_key, take_shard, write_part

    probes, shard = _probes_from_args(a), a.shard
    _check_out(a)
    opts = {"model": a.model, "target": a.target, "format": a.format}
    key, probes, failed = run_key(a.cmd, opts, [p.id for p in probes]), take_shard(probes, shard), scale.no_failures()
    if uses_ray(a):
        tables, failed = scale.run(a, a.cmd, opts, [a.model], scale.attribute_job(a.cmd, a.format, a.target), probes)
        table = tables["table"]
    else:
        plan.check_inputs(a, [a.model], probes)
        subject = _load(a, a.model)
        table = attribute(subject, tokenize_probes(subject, probes, a.format), method=a.cmd, target=a.target,
                          progress=True)
    write_part(table, a.out, key, shard)
    return table, failed


@command("dla")
def cmd_dla(a: argparse.Namespace) -> int:
    from unpact_mech.attribution.dla import average_over_answer

    table, failed = _mech_table(a)
    avg = average_over_answer(table)
    top = avg.reindex(avg.score.abs().sort_values(ascending=False).index).head(a.top)
    _print_df(top[["probe_id", "component", "layer", "head", "score"]].round(4))
    print(f"wrote {a.out} ({len(table)} rows)")
    return FAILED if failed else 0


@command("paths")
def cmd_paths(a: argparse.Namespace) -> int:
    table, failed = _mech_table(a)
    per_token = table.groupby(["probe_id", "position", "token"], sort=False)["score"].sum().reset_index()
    _print_df(per_token.round(4))
    print(f"wrote {a.out} ({len(table)} rows)")
    return FAILED if failed else 0


@command("localise")
def cmd_localise(a: argparse.Namespace) -> int:
    from unpact_mech.analysis.localise import localise
    from unpact_mech.core.io import write_table
    from unpact_mech.report.figures import head_heatmap, logit_lens_curves, save_figure, source_heatmap

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


@command("unlearn")
def cmd_unlearn(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from unpact_mech.model.loading import read_provenance
    from unpact_mech.unlearning import resolve_config, unlearn
    from unpact_mech.unlearning.resume import ResumeFiles, check_resume, refuse_legacy

    forget = _load_probes_arg(a.forget)
    retain = _load_probes_arg(a.retain) if a.retain else []
    over = {k: v for k, v in (("steps", a.steps), ("lr", a.lr), ("seed", a.seed), ("batch_size", a.batch_size),
                              ("target_forget_acc", a.target_forget_acc), ("loss_convention", a.loss_convention),
                              ("master_weights", a.master_weights))
            if v is not None}
    _, cfg = resolve_config(a.method, bool(retain), fmt=a.format, **over)  # settings, retain need: before the load
    _check_out(a, "dir")
    resume = ResumeFiles.beside(Path(a.out))
    refuse_legacy(resume)
    check_resume(resume, {"method": a.method, "hyperparameters": asdict(cfg)}, cfg.steps)  # schema and settings
    plan.check_inputs(a, [a.model], [*forget, *retain])
    subject = _load(a, a.model)
    out = unlearn(subject, a.method, forget, retain, a.out, fmt=a.format, overwrite=a.overwrite, **over)
    prov = read_provenance(out)
    print(json.dumps({k: prov[k] for k in ("method", "steps", "stopped_at", "forget_fact_acc_before",
                                           "forget_fact_acc_after", "train_seconds", "final_losses")}, indent=1))
    print(f"wrote {out}")
    return 0


@command("emphasize")
def cmd_emphasize(a: argparse.Namespace) -> int:
    from unpact_mech.core.io import write_table
    from unpact_mech.findings import destruction, recovery

    factors = sorted({1.0, *a.factors}) if a.sweep else [1.0, max(a.factors)]
    modes, criteria = a.modes, a.criteria
    out = _check_out(a, "dir")
    probes = _load_probes_arg(a.probes)
    forget = [p for p in probes if p.split == "forget"]
    if not forget:
        raise UnpactError(f"{a.probes} holds no probes with split 'forget'; emphasis tests forget probes (splits: "
                          f"{sorted({p.split for p in probes})})")
    base, unl = _models(a, probes)
    res = recovery(base, unl, forget, factors, modes, params=_params(a), fmt=a.format, criteria=criteria,
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
    import unpact_mech.routes as rt
    from unpact_mech.analysis import Analysis
    from unpact_mech.core.io import write_table

    routes, criteria, bits, steps = a.routes, a.criteria, a.bits, a.relearn_steps
    out = _check_out(a, "dir")
    probes = _load_probes_arg(a.probes)
    forget, retain, shots, unknown = rt.route_data(probes, a.n, a.shots, a.n_control)
    rt.check_route_data(routes, forget, unknown, retain, shots)  # before the models load
    base, unl = _models(a, [*forget, *retain, *shots, *unknown])
    options = {"quantize": rt.QuantizeOptions(bits=tuple(bits), quantizers=tuple(a.quantizers)),
               "relearn": rt.RelearnOptions(steps=tuple(steps), lr=a.relearn_lr),
               "in_context": rt.InContextOptions(shots=a.shots),
               "emphasis": rt.EmphasisOptions(factors=tuple(a.factors), n_draws=a.draws)}
    table = rt.recover(Analysis(base, forget, _params(a), a.format), unl, forget, unknown, retain, shots,
                    routes, criteria, options, progress=True, collateral=unknown)
    write_table(table, out / "recovery_routes.csv")
    print("how superficial is the forgetting: forget probes the base answers and the unlearned model does not, "
          "brought back by each route; control = what the same treatment gives without forgotten knowledge")
    _print_df(table[["route", "treatment", "criterion", "n", "recovered_k", "recovered", "control_kind", "control_k",
                     "control_n", "excess", "excess_low", "excess_high", "base_kept"]].round(3))
    print(f"wrote {out}")
    return 0


@command("patch")
def cmd_patch(a: argparse.Namespace) -> int:
    from unpact_mech.core.io import write_table
    from unpact_mech.patching import ESTIMATES, patch
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.report.figures import patch_heatmap, save_figure

    if _same_path(a.base, a.unlearned):
        raise UnpactError(f"--base and --unlearned are the same model ({a.base}); patching needs two models that "
                          "differ (every restoration would be 0/0)")
    if a.verify and a.method not in ESTIMATES:
        raise UnpactError(f"--verify {a.verify} checks an estimate against exact patching; --method {a.method} is "
                          f"already exact (use --method {' or '.join(ESTIMATES)} --verify {a.verify})")
    out, failed = _check_out(a, "dir"), scale.no_failures()
    probes = _load_probes_arg(a.probes)[: a.n]
    if uses_ray(a):
        opts = {"base": a.base, "unlearned": a.unlearned, "method": a.method, "kinds": list(a.kinds),
                "layer_step": a.layer_step, "direction": list(a.direction), "format": a.format, "verify": a.verify}
        tables, failed = scale.run(a, "patch", opts, [a.base, a.unlearned], scale.patch_job(a), probes)
        order = {d: k for k, d in enumerate(a.direction)}  # direction first, then probe: as the loop below
        pos, hd = (tables[t].sort_values("direction", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
                   for t in ("positions", "heads"))
    else:
        base, unl = _models(a, probes)
        layers = list(range(0, base.n_layers, a.layer_step))
        frames, heads = [], []
        for d in a.direction:
            for tp in tokenize_probes(base, probes, a.format):
                pos_t, head_t = patch(base, unl, tp, a.method, a.kinds, layers, direction=d, verify=a.verify)
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
    return FAILED if failed else 0


def _probes_from_args(a: argparse.Namespace) -> list[Any]:
    from unpact_mech.probes import Probe

    if a.probes:
        return _load_probes_arg(a.probes)
    if not a.prompt or not a.answer:
        raise UnpactError("give --prompt and --answer, or --probes FILE")
    return [Probe(id="cli", prompt=a.prompt, answer=a.answer)]
