"""Unlearning methods (registry) and the one shared training loop.

``unlearn(subject, "npo_gdr", forget, retain, out_dir)`` trains a fresh copy of the subject's HF model and
writes an HF checkpoint with ``unpact.json`` provenance. Methods: ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr,
simnpo, idk_dpo, task_vector, rmu (each one class with a ``loss``; see ``METHODS``).

Defaults (scaled from MUSE / open-unlearning to a 135M model on CPU): AdamW lr 1e-5, 10 steps, batch 4,
gradient clipping 1.0, gamma (forget weight) 1, alpha (retain weight) 1, NPO beta 0.1, SimNPO beta 2.5 and
delta 0, IdkDPO beta 0.1, Task Vector: fine-tune at lr 1e-4 then subtract with a = 1, RMU: layer 7
(of 30; MLP down-projections of layers 5-7 train), retain alpha 100, lr 1e-2, and a steering coefficient
c = 4 x the mean norm of the forget tokens' activations at that layer (SmolLM2: 4 x 129 = 516). RMU's paper
constant (c = 6.5 on Zephyr-7B) assumes small activations; with c = 20 against SmolLM2's norms of ~145 the
forget term shrank activations instead of scrambling them and nothing was forgotten. RMU's forget term acts on
each forget example's own tokens (question and answer), not on the chat template it shares with every retain
example, where the two terms would cancel.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unpact_mech.backends import KV_PREFIX
from unpact_mech.backends.kernel import AnswerIndex, answer_logprobs, per_sequence
from unpact_mech.errors import UnknownNameError, UnpactError
from unpact_mech.io import check_output
from unpact_mech.models import data_hash, save_checkpoint
from unpact_mech.probes import Probe, tokenize_probe
from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.resume import ResumeError, ResumeFiles, load_state, refuse_legacy, save_state

REFUSALS = ("I don't know.", "I'm not sure about that.", "I cannot answer that.", "I have no idea.")


class UnlearningError(UnpactError):
    """Training stopped (non-finite loss, bad data)."""


@dataclass
class UnlearnConfig:
    """Hyperparameters of every method; unused ones are ignored (and still recorded)."""

    lr: float = 1e-5
    steps: int = 10
    batch_size: int = 4
    grad_clip: float = 1.0
    seed: int = 0
    gamma: float = 1.0  # forget-term weight
    alpha: float = 1.0  # retain-term weight
    beta: float = 0.1  # NPO / DPO temperature
    delta: float = 0.0  # SimNPO margin
    tv_scale: float = 1.0  # Task Vector: theta - a * (theta_ft - theta)
    rmu_layer: int = 7
    rmu_coeff: float | None = None  # |c*u|; None: rmu_coeff_scale x mean norm of the forget tokens at the layer
    rmu_coeff_scale: float = 4.0
    rmu_alpha: float = 100.0
    rmu_param_layers: tuple[int, ...] | None = None  # default: rmu_layer-2 .. rmu_layer
    target_forget_acc: float | None = None  # calibration: stop once forget fact top-1 <= this
    check_every: int = 1
    checkpoint_every: int = 5
    fmt: str = "auto"


# ----------------------------------------------------------------------------------------------------------
# Data: probes (QA: loss on answer tokens) or raw text (loss on all tokens) -> padded batches.
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    fact_positions: tuple[int, ...] = ()
    # positions that belong to this example's content (QA: question + answer, not the shared chat template;
    # raw text: all but the first token); RMU's forget term acts only here
    content: tuple[int, ...] = ()


def qa_example(tokenizer: Any, probe: Probe, fmt: str = "auto", answer: str | None = None) -> Example:
    p = probe if answer is None else replace(probe, answer=answer, fact=None)
    tp = tokenize_probe(tokenizer, p, fmt)
    labels = [-100] * tp.prompt_len + list(tp.answer_ids)
    content = tuple(tp.attributable) + tuple(range(tp.prompt_len, len(tp.ids)))
    return Example(list(tp.ids), labels, tp.fact_positions, content)


def text_example(tokenizer: Any, text: str, max_len: int = 256) -> Example:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_len]
    if len(ids) < 2:
        raise UnlearningError(f"raw text too short to train on: {text[:40]!r}")
    return Example(ids, list(ids), (), tuple(range(1, len(ids))))


def to_examples(tokenizer: Any, data: Sequence[Probe | str], fmt: str = "auto") -> list[Example]:
    if not data:
        raise UnlearningError("empty data set")
    return [qa_example(tokenizer, d, fmt) if isinstance(d, Probe) else text_example(tokenizer, d) for d in data]


def collate(examples: Sequence[Example], pad_id: int, device: Any = None) -> L.Batch:
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    content = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, : len(e.ids)] = torch.tensor(e.ids)
        labels[r, : len(e.ids)] = torch.tensor(e.labels)
        mask[r, : len(e.ids)] = 1
        content[r, list(e.content)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "content_mask": content}
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------
@dataclass
class State:
    model: Any
    ref: Any
    cfg: UnlearnConfig
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """An unlearning method: a loss over (forget, retain) batches and the parameters it trains.

    ``reference``: what the method needs of the starting model. ``"none"``; ``"outputs"`` (its log-probs only:
    any model computing the same function will do, so the subject's own frozen weights serve and nothing is
    copied); ``"weights"`` (its parameters or hidden states: an unfolded copy is made).
    """

    name = ""
    reference = "weights"
    needs_retain = True
    defaults: dict[str, Any] = {}

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        """Prepare method-specific data (e.g. refusal answers) before training."""

    def trainable(self, model: Any, cfg: UnlearnConfig) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters()]

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def finish(self, s: State) -> None:
        """Post-processing after the last step (Task Vector's subtraction)."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def _retain_term(kind: str, s: State, retain: L.Batch) -> dict[str, torch.Tensor]:
    if kind == "gdr":
        return {"retain": s.cfg.alpha * L.gdr(s.model, retain)}
    if kind == "klr":
        return {"retain": s.cfg.alpha * L.klr(s.model, s.ref, retain)}
    return {}


def _make_combo(name: str, forget_kind: str, retain_kind: str) -> type[Method]:
    class Combo(Method):
        reference = "outputs" if forget_kind == "npo" or retain_kind == "klr" else "none"
        needs_retain = bool(retain_kind)

        def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
            if forget_kind == "ga":
                f = L.ga(s.model, forget)
            elif forget_kind == "npo":
                f = L.npo(s.model, s.ref, forget, s.cfg.beta)
            else:
                f = L.simnpo(s.model, forget, s.cfg.beta, s.cfg.delta)
            return {"forget": s.cfg.gamma * f, **_retain_term(retain_kind, s, retain)}

    Combo.name = name
    Combo.__name__ = f"Method_{name}"
    if forget_kind == "simnpo":
        Combo.defaults = {"beta": 2.5}
    return register_method(Combo)


for _name, _f, _r in [("ga", "ga", ""), ("ga_gdr", "ga", "gdr"), ("ga_klr", "ga", "klr"), ("npo", "npo", ""),
                      ("npo_gdr", "npo", "gdr"), ("npo_klr", "npo", "klr"), ("simnpo", "simnpo", "gdr")]:
    _make_combo(_name, _f, _r)


@register_method
class IdkDPO(Method):
    """DPO with refusals preferred over the forget answers, plus a GDR retain term."""

    name = "idk_dpo"
    reference = "outputs"

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        probes = state.extra["forget_probes"]
        if not all(isinstance(p, Probe) for p in probes):
            raise UnlearningError("idk_dpo needs question/answer probes as forget data, not raw text")
        state.extra["idk"] = [qa_example(tokenizer, p, state.cfg.fmt, REFUSALS[i % len(REFUSALS)])
                              for i, p in enumerate(probes)]

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        pref = collate([s.extra["idk"][i] for i in idx], s.extra["pad_id"], s.extra["device"])
        return {"forget": s.cfg.gamma * L.dpo(s.model, s.ref, pref, forget, s.cfg.beta), **_retain_term("gdr", s, retain)}


@register_method
class TaskVector(Method):
    """Fine-tune on the forget data, then theta - a * (theta_ft - theta)."""

    name = "task_vector"
    needs_retain = False
    defaults = {"lr": 1e-4}

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        return {"finetune": L.gdr(s.model, forget)}

    def finish(self, s: State) -> None:
        a = s.cfg.tv_scale
        with torch.no_grad():
            for p, p0 in zip(s.model.parameters(), s.ref.parameters()):
                p.copy_(p0 - a * (p - p0))


@register_method
class RMU(Method):
    """Representation misdirection: push forget activations at one layer to c*u; keep retain ones."""

    name = "rmu"
    defaults = {"lr": 1e-2}

    def _layers(self, cfg: UnlearnConfig) -> list[int]:
        return list(cfg.rmu_param_layers) if cfg.rmu_param_layers is not None else list(range(max(0, cfg.rmu_layer - 2), cfg.rmu_layer + 1))

    def trainable(self, model: Any, cfg: UnlearnConfig) -> list[torch.nn.Parameter]:
        layers = model.model.layers
        n = len(layers)
        bad = [i for i in self._layers(cfg) if not 0 <= i < n] + ([cfg.rmu_layer] if not 0 <= cfg.rmu_layer < n else [])
        if bad:
            raise UnlearningError(f"RMU layer(s) {bad} out of range for a model with {n} layers")
        return [p for i in self._layers(cfg) for p in layers[i].mlp.down_proj.parameters()]

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        cfg = state.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(state.model.config.hidden_size, generator=g).to(state.extra["device"])
        coeff = cfg.rmu_coeff
        if coeff is None:  # scale c to this model's activations (SmolLM2 layer 7: ~145 on question tokens)
            batch = collate(forget, state.extra["pad_id"], state.extra["device"])
            with torch.no_grad():
                h = L.hidden_at(state.ref, batch, cfg.rmu_layer)[batch["content_mask"].bool()]  # [n_content, d_model]
            coeff = cfg.rmu_coeff_scale * float(h.norm(dim=-1).mean()) if len(h) else 20.0
        state.extra["resolved"] = {"rmu_coeff": round(coeff, 4)}
        state.extra["control"] = coeff * u / u.norm()

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        f, r = L.rmu(s.model, s.ref, forget, retain, s.cfg.rmu_layer, s.extra["control"], s.cfg.rmu_alpha)
        return {"forget": s.cfg.gamma * f, "retain": r}


# ----------------------------------------------------------------------------------------------------------
def _reference(m: Method, model: Any, subject: Any) -> Any:
    """The frozen starting model a method compares against, made only when the method needs one."""
    if m.reference == "none":
        return None
    if m.reference == "outputs" and subject.has(KV_PREFIX):
        return subject.backend.kv().model  # the subject's own frozen weights (same function, no copy)
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


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


def resolve_config(method: str, has_retain: bool, config: UnlearnConfig | None = None,
                   **overrides: Any) -> tuple[Method, UnlearnConfig]:
    """The method and its settings (defaults < explicit ``config`` fields < ``overrides``), validated; cheap, so
    callers check them before loading any model."""
    if method not in METHODS:
        raise UnknownNameError(f"unknown unlearning method '{method}'; available: {sorted(METHODS)}")
    m = METHODS[method]()
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
        (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0, f"grad_clip must be finite and > 0, got {cfg.grad_clip}"),
        (cfg.check_every >= 1, f"check_every must be >= 1, got {cfg.check_every}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (cfg.target_forget_acc is None or 0 <= cfg.target_forget_acc <= 1,
         f"target_forget_acc must be in [0, 1], got {cfg.target_forget_acc}"),
        (all(math.isfinite(v) for v in (cfg.gamma, cfg.alpha, cfg.beta, cfg.delta, cfg.tv_scale)),
         "gamma, alpha, beta, delta and tv_scale must be finite"),
        (cfg.beta > 0, f"beta must be > 0, got {cfg.beta}"),
        (has_retain or not m.needs_retain, f"method '{method}' needs retain data (--retain)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UnlearningError(f"{method}: {msg}")
    return m, cfg


def unlearn(
    subject: Any,
    method: str,
    forget: Sequence[Probe | str],
    retain: Sequence[Probe | str],
    out_dir: str | Path,
    config: UnlearnConfig | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    **overrides: Any,
) -> Path:
    """Unlearn ``forget`` (keeping ``retain``) from a fresh copy of the subject's model; returns the checkpoint.

    Settings: the method's defaults, then every field of ``config`` that differs from ``UnlearnConfig()``, then
    ``overrides`` (explicit settings always beat defaults). An existing ``out_dir`` is replaced only with
    ``overwrite=True``. Training stops with an error if a weight becomes NaN or infinite.
    """
    overwrite = bool(overrides.pop("overwrite", False))
    m, cfg = resolve_config(method, bool(retain), config, **overrides)
    check_output(out_dir, kind="dir", overwrite=overwrite)
    tok = subject.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    f_ex = to_examples(tok, forget, cfg.fmt)
    r_ex = to_examples(tok, retain, cfg.fmt) if retain else []
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

    torch.manual_seed(cfg.seed)
    if not subject.from_source:
        raise UnlearningError(
            f"unlearn trains a fresh copy of '{subject.source}', but subject '{subject.name}' was built from an "
            "in-memory model that may differ from it; save it with save_checkpoint() and load_model() that directory"
        )
    model = subject.load_hf_model().train()
    ref = _reference(m, model, subject)
    dev = next(model.parameters()).device
    state = State(model, ref, cfg, {"pad_id": pad_id, "forget_probes": list(forget), "device": dev})
    m.setup(state, f_ex, r_ex, tok)
    params = m.trainable(model, cfg)
    train_ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in train_ids)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []  # step (int) and losses (float)
    step, stopped_at, checked = 0, None, (-1, math.nan)
    acc0 = fact_accuracy(model, f_ex, pad_id)
    if resume.exists():
        try:
            restored = load_state(resume, run_key, model, opt, gen)
        except ResumeError as err:
            raise UnlearningError(str(err)) from err
        if restored is not None:
            step, history = restored
            print(f"[unpact] resuming {method} from step {step}", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"unlearn {method}", disable=not progress)
    while step < cfg.steps:
        fi = torch.randint(len(f_ex), (min(cfg.batch_size, len(f_ex)),), generator=gen).tolist()
        ri = torch.randint(len(r_ex), (min(cfg.batch_size, len(r_ex)),), generator=gen).tolist() if r_ex else []
        fb = collate([f_ex[i] for i in fi], pad_id, dev)
        rb = collate([r_ex[i] for i in ri], pad_id, dev) if ri else fb
        terms = m.loss(state, fb, rb, fi)
        loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            raise UnlearningError(
                f"{method}: loss became {float(loss)} at step {step + 1}; the last good state is "
                f"{resume.meta if resume.exists() else 'the base model'} (lower lr or steps)"
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise UnlearningError(
                f"{method}: weights became NaN or infinite at step {step} (lr {cfg.lr}); nothing was written. "
                "Lower the learning rate"
            )
        rec = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        history.append(rec)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "step"})
        if on_step is not None:
            on_step(step, rec)
        if cfg.target_forget_acc is not None and step % cfg.check_every == 0 and method != "task_vector":
            model.eval()
            acc = fact_accuracy(model, f_ex, pad_id)
            model.train()
            checked = (step, acc)  # reused as the final accuracy if training ends here
            if acc <= cfg.target_forget_acc:
                stopped_at = step
                break
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_state(resume, model, opt, gen, step, history, run_key)
    bar.close()
    m.finish(state)
    model.eval()
    prov.update({"resolved": state.extra.get("resolved", {}), "steps": step, "stopped_at": stopped_at, "final_losses": history[-1] if history else {},
                 "forget_fact_acc_before": acc0, "forget_fact_acc_after": checked[1] if checked[0] == step else fact_accuracy(model, f_ex, pad_id),
                 "train_seconds": round(time.perf_counter() - t0, 2)})
    path = save_checkpoint(model, tok, out, prov, overwrite=overwrite)
    resume.remove()
    return path
