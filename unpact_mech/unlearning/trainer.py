"""The one Trainer: seeded AdamW with clipping, NaN guards, calibration to a forget target, resumable, atomic
checkpoints with an ``unpact.json`` stamp.

``unlearn(subject, "npo_gdr", forget, retain, out_dir)`` trains a fresh copy of the subject's HF model and
writes an HF checkpoint with ``unpact.json`` provenance. Methods: ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr,
simnpo, idk_dpo, task_vector, rmu (each one class with a ``loss``; see ``METHODS``).

Defaults (scaled from MUSE / open-unlearning to a 135M model on CPU): AdamW lr 1e-5, 10 steps, batch 4,
gradient clipping 1.0, gamma (forget weight) 1, alpha (retain weight) 1, NPO beta 0.1, SimNPO beta 4.5, gamma
0.125 and delta 0 (open-unlearning's ``configs/trainer/SimNPO.yaml``), IdkDPO beta 0.1, Task Vector: fine-tune at lr 1e-4 then subtract with a = 1, RMU: layer 7
(of 30; MLP down-projections of layers 5-7 train), retain alpha 100, lr 1e-2, and a steering coefficient
c = 4 x the mean norm of the forget tokens' activations at that layer (SmolLM2: 4 x 129 = 516). RMU's paper
constant (c = 6.5 on Zephyr-7B) assumes small activations; with c = 20 against SmolLM2's norms of ~145 the
forget term shrank activations instead of scrambling them and nothing was forgotten. RMU's forget term acts on
each forget example's own tokens (question and answer), not on the chat template it shares with every retain
example, where the two terms would cancel (``rmu_form="wmdp"``; open-unlearning's per-sequence form is
``rmu_form="open_unlearning"``, see :func:`unpact_mech.unlearning.losses.rmu`).

:func:`fit` runs the same loop without a checkpoint (the relearning recovery route trains through it with the
:class:`Finetune` method: gradient descent on the given data).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unpact_mech.core.errors import UnknownNameError
from unpact_mech.core.io import check_output
from unpact_mech.core.log import say
from unpact_mech.model.backends import fast_path, frozen
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs, per_sequence
from unpact_mech.model.loading import data_hash, save_checkpoint
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe
from unpact_mech.scoring import pad_token_id
from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.config import UnlearnConfig, UnlearningError
from unpact_mech.unlearning.data import Example, collate, to_examples
from unpact_mech.unlearning.methods import METHODS, Method, State
from unpact_mech.unlearning.optim import Optimizer, optimizer
from unpact_mech.unlearning.resume import (
    ResumeError,
    ResumeFiles,
    check_resume,
    load_state,
    refuse_legacy,
    save_state,
)


def _reference(m: Method, model: Any, subject: Subject) -> Any:
    """The frozen starting model a method compares against, made only when the method needs one."""
    if m.reference == "none":
        return None
    view = fast_path(subject.backend) if m.reference == "outputs" else None
    if view is not None:
        return view.model  # the subject's own frozen weights (same function, no copy)
    return frozen(copy.deepcopy(model))


@torch.no_grad()
def fact_accuracy(model: Any, examples: Sequence[Example], pad_id: int) -> float:
    """Share of QA examples whose fact tokens are all top-1 under teacher forcing (raw text: NaN)."""
    qa = [e for e in examples if e.fact_positions]
    if not qa:
        return math.nan
    dev = next(model.parameters()).device
    batch = collate(qa, pad_id, dev)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pairs = [(r, p) for r, e in enumerate(qa) for p in e.fact_positions]
    idx = AnswerIndex(*(torch.tensor(x, device=dev) for x in (
        [r for r, _ in pairs], [p - 1 for _, p in pairs], [qa[r].ids[p] for r, p in pairs], [r for r, _ in pairs])))
    _, top1 = answer_logprobs(idx.gather(logits), idx.targets)
    wrong = per_sequence((~top1).double(), idx.owner, len(qa))
    return float((wrong == 0).double().mean())


def _nonfinite_fix(params: Sequence[torch.nn.Parameter], otherwise: str) -> str:
    """What to change after a non-finite loss or weight: float16 weights (5 exponent bits, largest 65504) overflow
    in training whatever the rate (float32 master weights keep the update, but the forward and backward still run
    in float16), so their fix is another dtype."""
    if any(p.dtype == torch.float16 for p in params):
        return ("training in float16 is unstable (its range, up to 65504, overflows in the loss or the optimizer "
                "update); train in bfloat16 (--dtype bfloat16) or float32")
    return otherwise


def _snapshot(model: Any, step: int, fn: Callable[[int, Any], None]) -> None:
    model.eval()
    try:
        with torch.no_grad():
            fn(step, model)
    finally:
        model.train()


class Finetune(Method):
    """Gradient descent on the given data (NLL, reduced per ``loss_convention``): relearning, not unlearning, so it
    is not listed among the unlearning methods."""

    name = "finetune"
    reference = "none"
    needs_retain = False
    calibrates = False

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        return {"nll": L.nll(s.model, forget, s.cfg.loss_convention)}


def resolve_config(method: str | Method, has_retain: bool, config: UnlearnConfig | None = None,
                   **overrides: Any) -> tuple[Method, UnlearnConfig]:
    """The method and its settings (defaults < explicit ``config`` fields < ``overrides``), validated; cheap, so
    callers check them before loading any model."""
    if isinstance(method, Method):
        m = method
    elif method not in METHODS:
        raise UnknownNameError(f"unknown unlearning method '{method}'; available: {sorted(METHODS)}")
    else:
        m = METHODS[method]()
    method = m.name
    default = UnlearnConfig()
    unknown = [k for k in overrides if not hasattr(default, k)]
    if unknown:
        raise UnlearningError(f"unknown unlearning setting(s) {unknown}; see UnlearnConfig")
    explicit = {} if config is None else {k: v for k, v in asdict(config).items() if v != getattr(default, k)}
    cfg = replace(default, **{**m.defaults, **explicit, **overrides})
    checks = [
        (math.isfinite(cfg.lr) and cfg.lr > 0, f"lr must be finite and > 0, got {cfg.lr}"),
        (isinstance(cfg.steps, int) and cfg.steps >= 1, f"steps must be an integer >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (isinstance(cfg.full_batch, bool), f"full_batch must be true or false, got {cfg.full_batch!r}"),
        (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0, f"grad_clip must be finite and > 0, got {cfg.grad_clip}"),
        (cfg.check_every >= 1, f"check_every must be >= 1, got {cfg.check_every}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (cfg.target_forget_acc is None or 0 <= cfg.target_forget_acc <= 1,
         f"target_forget_acc must be in [0, 1], got {cfg.target_forget_acc}"),
        (all(math.isfinite(v) for v in (cfg.gamma, cfg.alpha, cfg.beta, cfg.delta, cfg.tv_scale)),
         "gamma, alpha, beta, delta and tv_scale must be finite"),
        (math.isfinite(cfg.tv_max_scale) and cfg.tv_max_scale >= cfg.tv_scale > 0 or cfg.target_forget_acc is None,
         f"tv_max_scale ({cfg.tv_max_scale}) must be finite and >= tv_scale ({cfg.tv_scale}) > 0 for calibration"),
        (cfg.tv_bisect_steps >= 0, f"tv_bisect_steps must be >= 0, got {cfg.tv_bisect_steps}"),
        (cfg.beta > 0, f"beta must be > 0, got {cfg.beta}"),
        (cfg.loss_convention in L.CONVENTIONS,
         f"loss_convention must be one of {L.CONVENTIONS}, got {cfg.loss_convention!r}"),
        (cfg.rmu_form in L.RMU_FORMS, f"rmu_form must be one of {L.RMU_FORMS}, got {cfg.rmu_form!r}"),
        (has_retain or not m.needs_retain, f"method '{method}' needs retain data (--retain)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UnlearningError(f"{method}: {msg}")
    return m, cfg


def _batch(n: int, cfg: UnlearnConfig, gen: torch.Generator) -> list[int]:
    """Example indices of one step: all of them (``full_batch``), else ``batch_size`` drawn with replacement."""
    if cfg.full_batch:
        return list(range(n))
    return torch.randint(n, (min(cfg.batch_size, n),), generator=gen).tolist()


def _run_steps(m: Method, state: State, params: list[torch.nn.Parameter], opt: Optimizer,
               gen: torch.Generator, f_ex: list[Example], r_ex: list[Example], pad_id: int, step: int,
               history: list[dict[str, Any]], progress: bool, on_step: Callable[[int, dict[str, float]], None] | None,
               on_snapshot: Callable[[int, Any], None] | None, save: Callable[[int], None] | None,
               last_good: Callable[[], str]) -> tuple[int, int | None, tuple[int, float]]:
    """The training loop shared by :func:`unlearn` and :func:`fit`: seeded batches, the method's loss, a
    non-finite-loss guard, AdamW with gradient clipping, a non-finite-weight guard, snapshots, calibration to the
    forget target and resume states. Returns (steps done, step stopped at the target or None, last check)."""
    model, cfg, method = state.model, state.cfg, m.name
    dev = state.extra["device"]
    stopped_at, checked = None, (-1, math.nan)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{'train' if isinstance(m, Finetune) else 'unlearn'} {method}",
               disable=not progress)
    while step < cfg.steps:
        fi = _batch(len(f_ex), cfg, gen)
        ri = _batch(len(r_ex), cfg, gen) if r_ex else []
        fb = collate([f_ex[i] for i in fi], pad_id, dev)
        rb = collate([r_ex[i] for i in ri], pad_id, dev) if ri else fb
        terms = m.loss(state, fb, rb, fi)
        loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            raise UnlearningError(
                f"{method}: loss became {float(loss.detach())} at step {step + 1}; the last good state is {last_good()} "
                f"({_nonfinite_fix(params, 'lower lr or steps')})"
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise UnlearningError(
                f"{method}: weights became NaN or infinite at step {step} (lr {cfg.lr}); nothing was written. "
                + _nonfinite_fix(params, "Lower the learning rate")
            )
        rec = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        history.append(rec)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "step"})
        if on_step is not None:
            on_step(step, rec)
        if on_snapshot is not None and (step % cfg.check_every == 0 or step == cfg.steps):
            _snapshot(model, step, on_snapshot)
        if cfg.target_forget_acc is not None and step % cfg.check_every == 0 and m.calibrates:
            model.eval()
            acc = fact_accuracy(model, f_ex, pad_id)
            model.train()
            checked = (step, acc)  # reused as the final accuracy if training ends here
            if acc <= cfg.target_forget_acc:
                stopped_at = step
                break
        if save is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save(step)
    bar.close()
    return step, stopped_at, checked


def _prepare(subject: Subject, m: Method, cfg: UnlearnConfig, f_ex: list[Example], r_ex: list[Example],
             forget: Sequence[Probe | str], tok: Any, pad_id: int
             ) -> tuple[Any, State, list[torch.nn.Parameter], Optimizer, torch.Generator]:
    """A fresh trainable copy of the subject's model, the method's state, its parameters, AdamW and the data RNG."""
    torch.manual_seed(cfg.seed)
    if not subject.from_source:
        raise UnlearningError(
            f"training uses a fresh copy of '{subject.source}', but subject '{subject.name}' was built from an "
            "in-memory model that may differ from it; save it with save_checkpoint() and load_model() that directory"
        )
    model = subject.load_hf_model().train()
    ref = _reference(m, model, subject)
    dev = next(model.parameters()).device
    state = State(model, ref, cfg, {"pad_id": pad_id, "forget_probes": list(forget), "device": dev,
                                    "forget_accuracy": lambda: fact_accuracy(model, f_ex, pad_id)})
    m.setup(state, f_ex, r_ex, tok)
    params = m.trainable(model, cfg)
    train_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in train_ids)
    opt = optimizer(params, cfg.lr, cfg.master_weights)
    return model, state, params, opt, torch.Generator().manual_seed(cfg.seed)


def fit(subject: Subject, data: Sequence[Probe | str], method: Method | None = None, progress: bool = False,
        on_snapshot: Callable[[int, Any], None] | None = None, **overrides: Any) -> Any:
    """Train a fresh copy of the subject's model on ``data`` with ``method`` (default :class:`Finetune`) through
    the same loop as :func:`unlearn`, writing nothing; ``on_snapshot(step, model)`` sees the model (eval mode,
    no grad) after every ``check_every``-th step and the last. Returns the trained HF model (eval mode)."""
    m, cfg = resolve_config(method or Finetune(), False, None, **overrides)
    tok = subject.tokenizer
    pad_id = pad_token_id(tok)
    f_ex = to_examples(tok, data, cfg.fmt, cfg.loss_convention)
    model, state, params, opt, gen = _prepare(subject, m, cfg, f_ex, [], data, tok, pad_id)
    _run_steps(m, state, params, opt, gen, f_ex, [], pad_id, 0, [], progress, None, on_snapshot, None,
               lambda: "the starting model")
    return model.eval()


def unlearn(
    subject: Subject,
    method: str | Method,
    forget: Sequence[Probe | str],
    retain: Sequence[Probe | str],
    out_dir: str | Path,
    config: UnlearnConfig | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_snapshot: Callable[[int, Any], None] | None = None,
    **overrides: Any,
) -> Path:
    """Unlearn ``forget`` (keeping ``retain``) from a fresh copy of the subject's model; returns the checkpoint.

    Settings: the method's defaults, then every field of ``config`` that differs from ``UnlearnConfig()``, then
    ``overrides`` (explicit settings always beat defaults). An existing ``out_dir`` is replaced only with
    ``overwrite=True``. Training stops with an error if a weight becomes NaN or infinite.
    ``on_snapshot(step, model)`` sees the model (in eval mode, under no_grad) after every ``check_every``-th
    step and after the last one, before the method's post-processing: the unlearning trajectory.
    """
    overwrite = bool(overrides.pop("overwrite", False))
    m, cfg = resolve_config(method, bool(retain), config, **overrides)
    method = m.name  # a Method instance (e.g. Finetune) is recorded by its name
    check_output(out_dir, kind="dir", overwrite=overwrite)
    tok = subject.tokenizer
    pad_id = pad_token_id(tok)
    f_ex = to_examples(tok, forget, cfg.fmt, cfg.loss_convention)
    r_ex = to_examples(tok, retain, cfg.fmt, cfg.loss_convention) if retain else []
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    resume = ResumeFiles.beside(out)
    try:
        refuse_legacy(resume)
    except ResumeError as err:
        raise UnlearningError(str(err)) from err
    prov = {
        "base_model": subject.provenance.get("base_model") or subject.name,
        "base_source": subject.source,
        "method": method,
        "hyperparameters": asdict(cfg),
        "forget_hash": data_hash([e.ids for e in f_ex]),
        "retain_hash": data_hash([e.ids for e in r_ex]),
        "n_forget": len(f_ex),
        "n_retain": len(r_ex),
    }
    run_key = data_hash(prov)
    try:
        meta = check_resume(resume, prov, cfg.steps)  # before the model is copied: a foreign or damaged state is refused
    except ResumeError as err:
        raise UnlearningError(str(err)) from err

    model, state, params, opt, gen = _prepare(subject, m, cfg, f_ex, r_ex, forget, tok, pad_id)
    history: list[dict[str, Any]] = []  # step (int) and losses (float)
    step = 0
    acc0 = fact_accuracy(model, f_ex, pad_id)
    if meta is not None:
        try:
            step, history = load_state(resume, meta, run_key, model, opt, gen)
        except ResumeError as err:
            raise UnlearningError(str(err)) from err
        say(f"[unpact] resuming {method} from step {step} of {cfg.steps} ({resume.meta})")
    t0 = time.perf_counter()
    step, stopped_at, checked = _run_steps(m, state, params, opt, gen, f_ex, r_ex, pad_id, step, history, progress,
                                           on_step, on_snapshot, lambda k: save_state(resume, model, opt, gen, k,
                                                                                       history, run_key, prov),
                                           lambda: f"{resume.meta if resume.exists() else 'the base model'}")
    m.finish(state)
    model.eval()
    acc1 = checked[1] if checked[0] == step and m.calibrates else fact_accuracy(model, f_ex, pad_id)
    prov.update({"resolved": state.extra.get("resolved", {}), "steps": step, "stopped_at": stopped_at,
                 "final_losses": history[-1] if history else {}, "forget_fact_acc_before": acc0,
                 "forget_fact_acc_after": acc1, "train_seconds": round(time.perf_counter() - t0, 2),
                 "target_reached": None if cfg.target_forget_acc is None else bool(acc1 <= cfg.target_forget_acc)})
    path = save_checkpoint(model, tok, out, prov, overwrite=overwrite)
    resume.remove()
    return path
