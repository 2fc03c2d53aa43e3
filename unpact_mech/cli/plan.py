"""``--plan`` and the up-front memory check of every command that loads a model (``unpact_mech.runtime.plan``).

Before any weight loads, a command's work is costed from the models' config.json and its tokenized inputs: the
steps it runs, their passes, FLOPs, peak memory and disk, and the time on this machine. ``--plan`` prints that and
stops; otherwise a run whose peak exceeds the memory it may use (``--max-memory``, a CUDA device's free memory, or
this machine's available memory) is refused with the figure and what to change, unless ``--skip-memory-check``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from unpact_mech.core.errors import UnpactError

# the commands whose work has a plan (the others refuse --plan rather than ignore it)
PLANNED = ("attribute", "dla", "paths", "compare", "localise", "patch", "emphasize", "recover", "unlearn", "evaluate",
           "study", "demo")


def check_plannable(a: argparse.Namespace) -> None:
    """Refuse ``--plan`` on a command that has no plan, before anything runs."""
    if getattr(a, "plan", False) and a.cmd not in PLANNED:
        raise UnpactError(f"unpact {a.cmd} has no plan yet (planned: {', '.join(PLANNED)}); drop --plan")


class PlanShown(Exception):  # noqa: N818  (not an error: the command's work was to print its plan)
    """Raised once ``--plan`` has printed the plan; the command exits 0 without loading a model."""


# attribution method -> its step (an unregistered method has no cost model; the plan says so)
def _method_step(name: str) -> Callable[..., Any]:
    from unpact_mech.runtime import plan as pl

    if name in ("loo", "loo_replace"):
        return pl.loo_step
    if name == "grad_x_input":
        return lambda shape, dtype, lengths, copies=1: pl.backward_step(shape, dtype, lengths, 1, copies)
    if name == "integrated_gradients":
        return lambda shape, dtype, lengths, copies=1: pl.backward_step(shape, dtype, lengths, 64, copies)
    if name in ("dla", "paths"):
        return lambda shape, dtype, lengths, copies=1: pl.cache_step(shape, dtype, lengths, copies, name)
    raise UnpactError(f"attribution method {name!r} has no cost model, so it cannot be planned or checked; give "
                      "--skip-memory-check to run it unchecked")


def lengths_of(tokenizer: Any, probes: Sequence[Any], fmt: str, chat: Any = None, max_len: int | None = None
               ) -> list[Any]:
    """The tokenized lengths of ``probes`` as the loaded model will render them (format, chat arguments);
    ``max_len``: refuse a probe longer than the model's context."""
    from unpact_mech.model.chat import set_chat_args
    from unpact_mech.probes import tokenize_probe
    from unpact_mech.runtime.plan import Length

    set_chat_args(tokenizer, chat)
    return [Length.of(tokenize_probe(tokenizer, p, fmt, max_len=max_len)) for p in probes]


def command_steps(a: argparse.Namespace, shape: Any, lengths: Sequence[Any]) -> list[Any]:
    """The steps of ``a.cmd`` on probes of ``lengths``: what each command runs, with the models it holds."""
    from unpact_mech.runtime import plan as pl

    dt, cmd = a.dtype, a.cmd
    if cmd == "attribute":
        return [_method_step(a.method)(shape, dt, lengths)]
    if cmd in ("dla", "paths"):
        return [pl.cache_step(shape, dt, lengths, 1, cmd)]
    if cmd == "compare":
        return [pl.loo_step(shape, dt, lengths, copies=2)]
    if cmd == "localise":
        return [pl.loo_step(shape, dt, lengths, copies=2), pl.cache_step(shape, dt, lengths, 2, "dla and logit lens")]
    if cmd == "patch":
        return [pl.cache_step(shape, dt, lengths, 2, "activation caches"),
                pl.score_step(shape, dt, lengths, 2, what="patched runs", repeat=max(1, shape.n_layers // a.layer_step))]
    if cmd in ("emphasize", "recover"):
        n_cond = 1 + 2 * len(getattr(a, "factors", [1]) or [1]) * max(1, getattr(a, "draws", 1) or 1)
        steps = [pl.loo_step(shape, dt, lengths, copies=2),
                 pl.score_step(shape, dt, lengths, 2, what="emphasised scoring", repeat=n_cond),
                 pl.generate_step(shape, dt, lengths, copies=2, repeat=n_cond)]
        if cmd == "recover" and "relearn" in a.routes:
            steps.append(pl.train_step(shape, dt, lengths, max(a.relearn_steps), 4, False, what="relearning", held=2,
                                       checkpoint=False))
        if cmd == "recover" and "quantize" in a.routes:
            steps.append(pl.score_step(shape, dt, lengths, 3, what="quantised copy"))
        return steps
    if cmd == "unlearn":
        from unpact_mech.unlearning.methods import METHODS

        ref = METHODS[a.method].reference == "weights"
        return [pl.train_step(shape, dt, lengths, a.steps or 10, a.batch_size or 4, ref, bool(a.master_weights))]
    raise UnpactError(f"unpact {cmd} has no plan yet; drop --plan")


def build(a: argparse.Namespace, spec: str, probes: Sequence[Any], lengths: Sequence[Any] | None = None) -> Any:
    """The Plan of ``a.cmd`` on model ``spec`` (its config.json) and ``probes`` (``lengths``: already tokenized)."""
    from unpact_mech.cli.scale import load_kwargs
    from unpact_mech.model.loading import read_tokenizer
    from unpact_mech.model.shape import read_shape
    from unpact_mech.runtime.plan import Plan

    if not probes:
        raise UnpactError("nothing to plan: the command has no probes")
    shape = read_shape(spec, a.trust_remote_code)
    if lengths is None:
        tok = read_tokenizer(spec, a.trust_remote_code)
        lengths = lengths_of(tok, probes, getattr(a, "format", "auto"), load_kwargs(a).get("chat"))
    return Plan(a.cmd, shape, a.dtype, command_steps(a, shape, lengths))


def show(plan: Any, limit: tuple[int, str] | None) -> None:
    """Print a plan: one row per step, the peak against the memory the run may use, and the time on this CPU."""
    import pandas as pd

    from unpact_mech.runtime.plan import GB
    from unpact_mech.runtime.speed import measure_rates

    rates = measure_rates(plan.shape, plan.dtype)
    sh = plan.shape
    size = f"{sh.n_params / 1e9:.2f}B" if sh.n_params >= 1e9 else f"{sh.n_params / 1e6:.1f}M"
    print(f"plan of unpact {plan.command} on {sh.name}: {size} parameters, "
          f"{plan.weight_bytes / GB:.2f} GB of weights in {plan.dtype}; nothing was loaded")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(plan.table(rates).to_string(index=False))
    print(f"peak {plan.peak / GB:.2f} GB (libraries and tokenizer {plan.baseline / GB:.2f} GB included); "
          f"{plan.flops / 1e12:.2f} TFLOP; about {_human(plan.seconds(rates))} on this CPU "
          f"({rates.matmul / 1e9:.0f} GFLOP/s measured now; no GPU has been measured)")
    if limit is not None:
        verdict = "fits in" if plan.peak <= limit[0] else "does NOT fit in"
        print(f"{verdict} the {limit[0] / GB:.1f} GB {limit[1]}")


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fixes(cmd: str) -> str:
    """What to change when a run does not fit."""
    method = (", choose a cheaper --method (grad_x_input: one forward and backward per probe)" if cmd == "attribute"
              else "")
    return f"Shorten the inputs (fewer or shorter probes){method}, --dtype bfloat16, or run where more memory is"


def build_builtins(a: argparse.Namespace, specs: Sequence[str]) -> None:
    """Without ``--plan`` (which reads a built-in's GGUF and builds nothing), build any built-in model's cache
    first, so that its tokenizer and config are on disk for the checks before loading."""
    from unpact_mech.model.loading import build_builtin

    if not getattr(a, "plan", False):
        for spec in dict.fromkeys(specs):
            build_builtin(spec)


def check_inputs(a: argparse.Namespace, specs: Sequence[str], probes: Sequence[Any],
                 read: dict[str, Any] | None = None) -> None:
    """Before any weights load: every probe fits each model's context, from the tokenizer and config.json on disk
    (where they are not, the same check runs once the model is loaded), and the run fits in memory
    (:func:`check`; ``--plan`` prints the plan and stops); ``read``: tokenizers already read."""
    from unpact_mech.cli.scale import load_kwargs
    from unpact_mech.model.loading import tokenizer_and_context

    build_builtins(a, specs)
    lengths = {}
    for spec in dict.fromkeys(specs) if probes else ():
        got = tokenizer_and_context(spec, a.trust_remote_code, read)
        if got is not None:  # the prompts as the loaded model will render them, each checked against its context
            lengths[spec] = lengths_of(got[0], probes, a.format, load_kwargs(a).get("chat"), max_len=got[1])
    check(a, specs, probes, lengths)


def check(a: argparse.Namespace, specs: Sequence[str], probes: Sequence[Any], lengths: dict[str, Any]) -> None:
    """``--plan``: print the plan and stop (:class:`PlanShown`). Otherwise refuse a run that will not fit, before
    any weight loads; ``lengths``: by spec, the probes' lengths from a tokenizer on disk (a spec without them is
    checked only with ``--plan``, which reads its tokenizer). A pair's two models share one shape: the first
    one's plan counts both copies."""
    if "plan" not in vars(a) or not probes:
        return
    spec = specs[0] if a.plan else next((s for s in specs if s in lengths), None)
    if spec is None:
        return
    def make() -> Any:
        try:
            return build(a, spec, probes, lengths.get(spec))
        except UnpactError:  # no cost model for this work: --plan says so; a run goes on unchecked, as before
            if a.plan:
                raise
            return None

    plan = _plan_or_refuse(a, a.device, make, fixes(a.cmd))
    if plan is not None and plan.flops > LONG_FLOPS:
        from unpact_mech.runtime.speed import measure_rates

        steps = ", ".join(f"{s.what} {s.passes} passes" for s in plan.steps)
        print(f"[unpact] planned for {spec}: {steps}; {plan.flops / 1e12:.1f} TFLOP, about "
              f"{_human(plan.seconds(measure_rates(plan.shape, plan.dtype)))} on this CPU, peak {plan.describe()}",
              file=sys.stderr)


def _plan_or_refuse(a: argparse.Namespace, device: str | None, make: Callable[[], Any], fix: str) -> Any:
    """``--plan``: print ``make()`` and stop. Else, unless ``--skip-memory-check``, refuse the plan where its peak
    exceeds the memory the run may use; returns the plan checked (None when skipped or when ``make`` has none)."""
    from unpact_mech.runtime.plan import available_memory, check_fits

    if a.plan:
        show(make(), available_memory(device, a.max_memory))
        raise PlanShown
    plan = None if a.skip_memory_check else make()
    if plan is not None:
        check_fits(plan, available_memory(device, a.max_memory), fix)
    return plan


def check_evaluate(a: argparse.Namespace, probes: Sequence[Any], options: dict[str, Any]) -> None:
    """``unpact evaluate`` before any model loads: the task's work (:func:`unpact_mech.evals.work.task_work`) on
    the first model's tokenizer, each sequence checked against its context, then ``--plan`` or the memory check
    (:func:`_plan_or_refuse`). The models are scored one after another, beside the retain model when one is given.
    Where the tokenizer is not on disk (and no ``--plan``), the run is checked once loaded."""
    from unpact_mech.cli.scale import load_kwargs
    from unpact_mech.evals.work import task_work
    from unpact_mech.model.loading import read_tokenizer, tokenizer_and_context
    from unpact_mech.model.shape import read_shape
    from unpact_mech.runtime import plan as pl

    spec = a.model[0]
    build_builtins(a, [spec])
    got = tokenizer_and_context(spec, a.trust_remote_code)
    if got is None and not a.plan:
        return
    tok, context = got if got is not None else (read_tokenizer(spec, a.trust_remote_code), None)
    chat = load_kwargs(a).get("chat")
    parts = []
    for w in task_work(a.task, probes, **options):
        lengths = lengths_of(tok, w.probes, w.fmt, chat, max_len=None if w.cut else context)
        parts.append((w, [replace(x, answer=max(1, min(x.answer, w.cut - x.prompt))) for x in lengths] if w.cut
                      else lengths))
    held, runs = (2 if a.retain_model else 1), len(a.model)

    def make() -> Any:
        shape = read_shape(spec, a.trust_remote_code)
        steps = [replace(pl.score_step(shape, a.dtype, lengths, held, repeat=runs) if w.new_tokens == 0 else
                         pl.generate_step(shape, a.dtype, lengths, w.new_tokens, held, repeat=runs), what=w.what)
                 for w, lengths in parts if lengths]
        return pl.Plan("evaluate", shape, a.dtype, steps)

    _plan_or_refuse(a, a.device, make, "Evaluate fewer probes (--subset, or a shorter probe file), fewer "
                    "--max-new-tokens, --dtype bfloat16, or run where more memory is")


LONG_FLOPS = 5e12  # work above this (about 20 s on 2 CPU cores) is announced with its planned time


def study_steps(cfg: Any, shape: Any, tokenizer: Any) -> list[Any]:
    """The steps of a study (``unpact study`` / ``demo``) per stage, with the budget of ``study.settings``: the
    data stage scores the candidate facts; KeyTokens are leave-one-out on the forget split; per method,
    unlearning (its checkpoint written once), the findings on base + unlearned (leave-one-out of both splits,
    emphasised scoring and generation, the localisation's caches) and the recovery routes (a quantised copy, and
    relearning a working copy with its gradients and AdamW states beside base and unlearned)."""
    from unpact_mech.evals.loaders import load_probe_spec
    from unpact_mech.model.chat import ChatArgs
    from unpact_mech.runtime import plan as pl
    from unpact_mech.study.settings import budget_order, method_settings
    from unpact_mech.unlearning import METHODS

    pool = [p for spec in cfg.probes for p in load_probe_spec(spec)]
    budget, routes = cfg.budget, cfg.route_budget
    cands = budget_order(pool)[: budget.candidates] if cfg.per_split else pool
    chat = ChatArgs(cfg.system_prompt, cfg.date_string)
    lens = dict(zip([p.id for p in cands], lengths_of(tokenizer, cands, "auto", chat)))
    split = {s: [lens[p.id] for p in cands if p.split == s][: cfg.per_split or None]
             for s in ("forget", "retain", "general")}
    forget, others = split["forget"] or list(lens.values())[:1], split["retain"] + split["general"]
    both = forget + others
    dt = cfg.dtype
    n_cond = len(cfg.factors) * (1 + budget.n_draws + 1)  # KeyTokens, random draws, function words
    steps = [pl.score_step(shape, dt, list(lens.values()), 1, what="data: known facts"),
             replace(pl.loo_step(shape, dt, forget, 1), what="keytokens: leave-one-out")]
    given = dict(cfg.unlearned)
    for m in list(given) or list(cfg.methods):
        if m not in given:  # the frontier's emphasised scoring runs on the training copy between steps
            s = method_settings(m, cfg.steps, cfg.target)
            ref = METHODS[m].reference == "weights"
            st = pl.train_step(shape, dt, forget + split["retain"], int(s["steps"]), 4, ref, what=f"{m}: unlearning")
            fr = budget.frontier
            front = pl.score_step(shape, dt, forget, 1, repeat=len(fr.factors) * (2 + fr.n_draws))
            steps.append(replace(st, activations=max(st.activations, front.activations),
                                 flops=st.flops + front.flops * max(1, int(s["steps"]) // fr.every)))
        for st in (pl.loo_step(shape, dt, both, 2),
                   pl.score_step(shape, dt, forget, 2, what="emphasis", repeat=n_cond),
                   pl.generate_step(shape, dt, forget, copies=2, repeat=1 + len(budget.gen_factors) * 3),
                   pl.cache_step(shape, dt, forget[:4] + split["retain"][:2], 2, "localisation")):
            steps.append(replace(st, what=f"{m}: findings, {st.what}"))
        if "relearn" in routes.routes:
            steps.append(pl.train_step(shape, dt, forget, max(routes.relearn_steps), len(forget), False,
                                       what=f"{m}: routes, relearning", held=2, checkpoint=False))
        if "quantize" in routes.routes:
            n_q = len(routes.bits) * len(routes.quantizers)
            st = pl.score_step(shape, dt, forget + others, 3, what=f"{m}: routes, quantised copies", repeat=n_q)
            steps.append(st)
    return steps


def study_plan(cfg: Any) -> Any:
    """The Plan of a study config, from its model's config.json and tokenizer and its probes (no weights)."""
    from unpact_mech.model.loading import read_tokenizer
    from unpact_mech.model.shape import read_shape
    from unpact_mech.runtime.plan import Plan

    shape = read_shape(cfg.model)
    return Plan("study", shape, cfg.dtype, study_steps(cfg, shape, read_tokenizer(cfg.model)))


def check_study(a: argparse.Namespace, cfg: Any) -> None:
    """``--plan`` of a study: print it and stop. Otherwise refuse, before the base model loads, a study whose
    planned peak exceeds the memory it may use (where its tokenizer is on disk)."""
    from unpact_mech.model.loading import on_disk

    build_builtins(a, [cfg.model])
    if a.plan or on_disk(cfg.model) is not None:
        _plan_or_refuse(a, cfg.device, lambda: study_plan(cfg), "Give fewer --methods, fewer probes per split "
                        "(--per-split), --dtype bfloat16, or run where more memory is")
