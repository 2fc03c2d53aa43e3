"""The study commands of ``unpact``: ``study`` (the dilemma pipeline on any probes, trained methods or given
checkpoints), ``evaluate`` (a task's own metrics), ``data`` (the probe sets by name) and ``merge`` (shards'
parts). Registered in ``COMMANDS`` on import."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.cli import plan
from unpact_mech.cli.commands import (
    _check_out,
    _load,
    _load_probes_arg,
    _params,
    _print_df,
    command,
)
from unpact_mech.cli.scale import loads_beyond_config
from unpact_mech.core.errors import UnpactError

# the study options a config states; with --config none of them may be given
_STUDY_OPTIONS = ("model", "methods", "out", "steps", "target", "on_change", "probes", "unlearned", "per_split",
                  "no_patch", "include_unknown", "task", "finetune", "finetune_steps", "retain_model", "alpha", "beta",
                  "max_keytokens", "dtype", "device", "system_prompt", "date_string")


def _study_config(a: argparse.Namespace, parser_defaults: dict[str, Any]) -> Any:
    """The StudyConfig of ``--config FILE`` (no other study option given), or of the study options."""
    from unpact_mech.study.config import StudyConfig

    if a.config is not None:
        given = [f"--{o.replace('_', '-')}" for o in _STUDY_OPTIONS if getattr(a, o) != parser_defaults.get(o)]
        if given:
            raise UnpactError(f"--config states the whole study; {', '.join(given)} would change it: edit the config "
                              "(or drop --config and give the options)")
        return StudyConfig.load(a.config)
    return StudyConfig(model=a.model, methods=tuple(a.methods), unlearned=tuple(a.unlearned or []),
                       probes=tuple(a.probes or ["facts"]), task=a.task, out=a.out, steps=a.steps, target=a.target,
                       patch=not a.no_patch, per_split=a.per_split, known_only=not a.include_unknown,
                       keytokens=_params(a), finetune=a.finetune, finetune_steps=a.finetune_steps,
                       retain_model=a.retain_model, on_change=a.on_change, dtype=a.dtype, device=a.device,
                       system_prompt=a.system_prompt, date_string=a.date_string)


@command("study")
def cmd_study(a: argparse.Namespace) -> int:
    from unpact_mech.cli.parser import build_parser
    from unpact_mech.core.io import read_table
    from unpact_mech.evals.tasks import TASKS
    from unpact_mech.report.tables import format_rates
    from unpact_mech.study.config import Study
    from unpact_mech.study.dilemma import check_given

    cfg = _study_config(a, vars(build_parser().parse_args(["study"])))
    given = dict(cfg.unlearned)  # the checks below read the config, from a file or from the options
    if len(given) != len(cfg.unlearned):
        raise UnpactError("--unlearned: each NAME must be given once")
    if cfg.finetune and given:
        raise UnpactError("--finetune trains the model the checkpoints would be compared with; --unlearned "
                          "checkpoints were made from another model: give one or the other")
    if cfg.retain_model is not None and (cfg.finetune or cfg.task is None
                                         or not TASKS[cfg.task].takes("retain_model")):
        raise UnpactError("--retain-model is forget quality's reference for --task tofu (and --finetune teaches its "
                          "own): add --task tofu, or drop it")
    if given:
        check_given(given)  # before any probe file or model is read
    # options a config cannot state (placement, remote code, pickles) load the model here, as the config says
    a.dtype, a.device, a.system_prompt, a.date_string = cfg.dtype, cfg.device, cfg.system_prompt, cfg.date_string
    plan.check_study(a, cfg)  # --plan prints the stages' costs and stops; a study that cannot fit is refused
    loaded = _load(a, cfg.model) if loads_beyond_config(a) else None
    table = Study(cfg).run(loaded).summary
    print("\nSummary (one row per unlearned model):")
    _print_df(format_rates(table).round(3))
    if cfg.task:
        metrics = read_table(Path(cfg.out) / "task_metrics.csv")
        print(f"\n{cfg.task} metrics (also in the report):")
        cols = [c for c in ("role", "split", "metric", "value", "k", "n", "low", "high", "chance") if c in metrics]
        _print_df(metrics[cols].round(4))
    return 0


def _passages(a: argparse.Namespace) -> list[Any]:
    """MUSE's privleak passages of ``--probes`` (a MUSE benchmark): the ``--split`` list (default forget,holdout),
    each from the hub or from ``--source SPLIT=FILE,...``."""
    from unpact_mech.evals.loaders import load_benchmark

    if not a.probes.startswith("muse-") or a.subset not in (None, "privleak"):
        raise UnpactError(f"--task {a.task} scores MUSE's privleak passages: give --probes muse-news or muse-books "
                          "(subset privleak)")
    splits = [x.strip() for x in (a.split or "forget,holdout").split(",")]
    sources: dict[str, str | None] = dict.fromkeys(splits)
    if a.source:
        pairs = [x.partition("=") for x in a.source.split(",")]
        if len(splits) == 1 and len(pairs) == 1 and not pairs[0][1]:
            sources[splits[0]] = a.source
        elif any(not sep or k not in sources for k, sep, _ in pairs) or {k for k, _, _ in pairs} != set(splits):
            raise UnpactError(f"--source: give one local file per split as SPLIT=FILE,... for the splits "
                              f"{', '.join(splits)}, e.g. forget=forget.jsonl,holdout=holdout.jsonl")
        else:
            sources.update({k: v for k, _, v in pairs})
    return [x for sp in splits for x in load_benchmark(a.probes, "privleak", sp, source=sources[sp])]


def _shots(a: argparse.Namespace) -> list[Any]:
    """KnowMem's in-context examples: ``--shots`` (a split of the benchmark, or a local file in its schema), or
    by default the ``_icl`` split beside the scored one when it comes from the hub; none otherwise."""
    from unpact_mech.evals.loaders import BENCHMARKS, load_benchmark

    bench = a.probes in BENCHMARKS
    if a.shots is None:
        if not bench or a.source or a.convention == "unpact_v1":
            return []
        return load_benchmark(a.probes, "knowmem", f"{a.split or 'forget_qa'}_icl")
    if Path(a.shots).expanduser().exists():
        if not bench:
            return _load_probes_arg(a.shots)
        return load_benchmark(a.probes, "knowmem", "forget_qa_icl", source=a.shots)
    if not bench:
        raise UnpactError(f"--shots {a.shots!r}: no such file, and a split name needs a benchmark as --probes")
    return load_benchmark(a.probes, "knowmem", a.shots)


@command("evaluate")
def cmd_evaluate(a: argparse.Namespace) -> int:
    from unpact_mech.cli.plan import check_evaluate
    from unpact_mech.core.io import write_table
    from unpact_mech.evals.loaders import BENCHMARKS, load_benchmark
    from unpact_mech.evals.tasks import TASKS, task_metrics
    from unpact_mech.probes import Probe

    if a.out:
        _check_out(a)
    t = TASKS[a.task]
    if t.inputs is not Probe:
        probes = _passages(a)
    elif a.probes in BENCHMARKS:
        probes = load_benchmark(a.probes, subset=a.subset, split=a.split, source=a.source)
    elif a.subset or a.split or a.source:
        raise UnpactError(f"--subset/--split/--source belong to a benchmark name; {a.probes!r} is read as a probe file "
                          f"(benchmarks: {', '.join(sorted(BENCHMARKS))})")
    else:
        probes = _load_probes_arg(a.probes)  # a probe file, or facts:SPLIT
    opts: dict[str, Any] = {}
    if a.task == "wmdp":
        opts["formulations"] = a.formulations
        if a.description is not None:
            opts["description"] = a.description
    if t.takes("convention"):
        opts["convention"] = a.convention
    if t.takes("shots"):
        opts["shots"] = _shots(a)
    if a.ref_auc is not None:
        opts["ref_auc"] = a.ref_auc
    if a.max_new_tokens is not None:
        opts["max_new_tokens"] = a.max_new_tokens
    check_evaluate(a, probes, opts)  # --plan, the contexts and the memory, before any model loads
    if a.retain_model is not None:
        opts["retain_model"] = _load(a, a.retain_model)
    table = pd.concat([task_metrics(a.task, _load(a, m), probes, **opts) for m in a.model], ignore_index=True)
    cols = [c for c in ("model", "metric", "value", "k", "n", "low", "high", "chance", "above_chance", "ref_auc",
                        "n_shots", "convention") if c in table]
    _print_df(table[cols].round(4))
    if a.out:
        write_table(table, a.out)
        print(f"-> {a.out}")
    return 0


@command("merge")
def cmd_merge(a: argparse.Namespace) -> int:
    from unpact_mech.runtime.sharding import merge_parts

    _check_out(a, inputs=a.parts)
    merged = merge_parts(a.parts, a.out)
    print(f"merged {len(a.parts)} parts, {len(merged)} rows -> {a.out}")
    return 0


@command("data")
def cmd_data(a: argparse.Namespace) -> int:
    from unpact_mech.evals.loaders import BENCHMARKS, load_benchmark
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
