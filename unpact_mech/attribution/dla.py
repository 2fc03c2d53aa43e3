"""Direct logit attribution (DLA) and attention paths from one cached forward pass.

The final residual at query position q is a sum of components: embeddings, every head's output
z[q, h] @ W_O[h], attention output biases, every MLP output. With the final norm's scale frozen from the
cache, the final norm is affine (x -> (x_centred / scale[q]) * g + b_ln) and the vocabulary-centred answer logit
is linear in the components:

    logit(y) - mean_v logit(v) = sum_c (c_centred / scale[q]) . (g * u_y) + b_ln . u_y + (b_U[y] - mean b_U),
    u_y = W_U[:, y] - mean_v W_U[:, v]

(centring of c only for LayerNorm models; RMSNorm has none; a model's logit scaling multiplies everything).
The model's weights are used as loaded (no TransformerLens weight processing, so no second copy); g and b_ln
are read from the final norm and checked against the cached ``ln_final.hook_out`` on every call. For the
logit difference to the strongest other token, the direction is u_y - u_alt. The per-head terms are further
split by source position (attention paths): pattern[h, q, s] * v[s, kv(h)] . (W_O[h] u) / scale[q], with u
folded into W_O first, so no [pos, head, src, d_model] tensor is built. Grouped-query attention: query head h
reads kv head h // (n_heads / n_kv_heads), as in HF's ``repeat_kv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from unpact_mech.attribution.registry import register
from unpact_mech.attribution.table import make_table
from unpact_mech.core.display import attention_html
from unpact_mech.core.errors import UnpactError
from unpact_mech.hooks import act_name
from unpact_mech.model.backends.kernel import AnswerIndex, OutputTransform, answer_logprobs
from unpact_mech.model.subject import Subject
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import memoized

Target = Literal["logit", "logit_diff"]


@dataclass
class Decomposition:
    """DLA of one probe's answer tokens (T of them), optionally with per-source attention paths."""

    tprobe: TokenizedProbe
    target: str
    alt_ids: list[int]  # strongest other token per answer position (logit_diff), else []
    embed: Float[Tensor, " T"]
    heads: Float[Tensor, "layer head T"]
    attn_bias: Float[Tensor, "layer T"]
    mlp: Float[Tensor, "layer T"]
    unembed_bias: Float[Tensor, " T"]
    total: Float[Tensor, " T"]  # the model's (centred) logit or logit difference, for completeness checks
    paths: Float[Tensor, "layer head T src"] | None = None

    def component_sum(self) -> Float[Tensor, " T"]:
        return self.embed + self.heads.sum((0, 1)) + self.attn_bias.sum(0) + self.mlp.sum(0) + self.unembed_bias


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit weights, else the weights' own dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _is_ln(cfg: Any) -> bool:
    return str(getattr(cfg, "normalization_type", "RMS")).upper().startswith("LN")


def _maybe_bias(module: Any, name: str) -> Tensor | None:
    val = getattr(module, name, None) if module is not None else None
    return val if isinstance(val, torch.Tensor) else None


def _cached_names(n_layers: int, extra: Sequence[str] = ()) -> set[str]:
    names = {act_name(n) for n in ("embed", "pos_embed", "ln_final_scale", "ln_final_normalized", "ln_final_out")}
    names |= set(extra)
    for layer in range(n_layers):
        names |= {act_name(n, layer) for n in ("z", "mlp_out", "pattern", "v", "resid_pre")}
    return names


def run_cache(subject: Subject, ids: Sequence[int], names: set[str], hooks: Sequence[Any] = ()) -> tuple[Tensor, Any]:
    """One forward with only ``names`` cached (plus optional intervention hooks)."""
    inp = torch.tensor([list(ids)], device=subject.device)
    with torch.no_grad():
        if hooks:
            with subject.bridge.hooks(fwd_hooks=list(hooks)):
                return subject.bridge.run_with_cache(inp, names_filter=lambda n: n in names)
        return subject.bridge.run_with_cache(inp, names_filter=lambda n: n in names)


@torch.no_grad()
def decompose(
    subject: Subject, tp: TokenizedProbe, target: Target = "logit", with_paths: bool = True, hooks: Sequence[Any] = ()
) -> Decomposition:
    """DLA (and attention paths) of every answer token of one probe."""
    if target not in ("logit", "logit_diff"):
        raise UnpactError(f"unknown DLA target {target!r}: use 'logit' or 'logit_diff'")
    _post_attn_norms(subject)
    return memoized(subject, hooks, ("decompose", tp.probe.id, tuple(tp.ids), tp.prompt_len, target, with_paths),
                    lambda: _decompose(subject, tp, target, with_paths, hooks))


def _post_attn_norms(subject: Subject) -> bool:
    """True when the blocks normalise the attention output before adding it (Gemma 2/3 "sandwich" norms).

    Those norms are frozen from the cache like the final norm (see :func:`_decompose`); the MLP's post-norm needs
    nothing, as ``hook_mlp_out`` is read after it. A model with post-sublayer norms that the bridge does not
    expose as ``ln1_post`` is refused rather than decomposed wrongly.
    """
    post = any(name.endswith("post_feedforward_layernorm") for name, _ in subject.bridge.named_modules())
    if post and not hasattr(subject.bridge.blocks[0], "ln1_post"):
        raise UnpactError(
            f"direct logit attribution of '{subject.name}' is not supported: its blocks normalise the attention and "
            "MLP outputs (post-sublayer norms) and the bridge exposes no 'ln1_post' scale to freeze. Leave-one-out, "
            "KeyTokens, emphasis, patching and unlearning work on it."
        )
    return post


def norm_affine(subject: Subject, mod: Any, normed: Tensor, out: Tensor, what: str) -> tuple[Tensor, Tensor | None]:
    """(g, b) of a norm read as out = normalized * g + b, checked against its cached input and output rows."""
    w = getattr(mod, "weight", None)
    g = torch.ones(out.shape[-1], device=out.device) if w is None else w.detach()
    if type(mod).__name__.startswith("Gemma"):  # Gemma's RMSNorm multiplies by (1 + weight)
        g = 1.0 + g
    b_ln = _maybe_bias(mod, "bias")
    recon = normed * g + (b_ln if b_ln is not None else 0.0)
    tol = 1e-3 if out.dtype == torch.float32 else 5e-2
    if not torch.allclose(recon.float(), out.float(), atol=tol * float(out.abs().max().clamp(min=1.0))):
        raise UnpactError(f"direct logit attribution of '{subject.name}' is not supported: its {what} "
                          f"({type(mod).__name__}) is not the affine map normalized * weight + bias")
    return g.to(out.dtype), None if b_ln is None else b_ln.detach().to(out.dtype)


def final_norm_affine(subject: Subject, cache: Any, qpos: Tensor) -> tuple[Tensor, Tensor | None]:
    """(g, b_ln) of the final norm read as out = normalized * g + b_ln, checked on the cached run."""
    mod = subject.bridge.ln_final._original_component
    normed, out = cache[act_name("ln_final_normalized")][0, qpos], cache[act_name("ln_final_out")][0, qpos]
    return norm_affine(subject, mod, normed, out, "final norm")


def _decompose(subject: Subject, tp: TokenizedProbe, target: Target, with_paths: bool, hooks: Sequence[Any]) -> Decomposition:
    b, cfg = subject.bridge, subject.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    post = _post_attn_norms(subject)
    extra = [act_name(k, layer) for layer in range(n_layers) for k in ("ln1_post_scale", "ln1_post_normalized", "attn_out")]
    logits, cache = run_cache(subject, tp.ids, _cached_names(n_layers, extra if post else ()), hooks)
    dev = logits.device
    qpos = torch.arange(tp.prompt_len - 1, len(tp.ids) - 1, device=dev)  # positions that predict the answer tokens
    tgt = torch.tensor(tp.answer_ids, device=dev)
    W_U = b.W_U  # [d_model, vocab]
    b_U = _maybe_bias(b.unembed, "b_U")
    g, b_ln = final_norm_affine(subject, cache, qpos)
    work = _work_dtype(W_U.dtype)  # the sums below in float32 for bf16/fp16 models (as transformers' norms do)
    g, b_ln = g.to(work), None if b_ln is None else b_ln.to(work)
    b_U = None if b_U is None else b_U.to(work)
    transform = OutputTransform.from_config(subject.backend.config)
    if transform.softcap is not None:
        raise UnpactError(f"direct logit attribution of '{subject.name}' is not supported: its final logits are "
                          "soft-capped (tanh), which is not linear in the components")
    lg = logits[0, qpos].to(work)  # [T, vocab]
    lg = lg - lg.mean(-1, keepdim=True)
    alt: list[int] = []
    u_mean = W_U.mean(1, dtype=work)  # [d_model], without a float32 copy of W_U

    def direction(ids: Tensor) -> tuple[Tensor, Tensor]:
        """(g * u, b_ln . u + centred b_U) for each token id, times the logit scale."""
        u = W_U[:, ids].to(work) - u_mean[:, None]  # [d_model, T]
        bias = b_ln @ u if b_ln is not None else torch.zeros(len(ids), device=dev, dtype=lg.dtype)
        if b_U is not None:
            bias = bias + b_U[ids] - b_U.mean()
        return transform.scale * g[:, None] * u, transform.scale * bias

    U, ub = direction(tgt)
    total = lg.gather(1, tgt[:, None])[:, 0]
    if target == "logit_diff":
        masked = lg.clone()
        masked[torch.arange(len(tgt), device=dev), tgt] = -torch.inf
        alt_t = masked.argmax(-1)
        alt = alt_t.tolist()
        U_alt, ub_alt = direction(alt_t)
        U, ub = U - U_alt, ub - ub_alt
        total = total - lg.gather(1, alt_t[:, None])[:, 0]
    if _is_ln(cfg):  # (x - mean x) . u == x . (u - mean u)
        U = U - U.mean(0, keepdim=True)
    scale = cache[act_name("ln_final_scale")][0, qpos, 0].to(work)  # [T]

    def direct(resid: Tensor) -> Tensor:  # resid [pos, d_model] -> [T]
        return (resid[qpos].to(work) * U.T).sum(-1) / scale

    embed = direct(cache[act_name("embed")][0])
    if act_name("pos_embed") in cache:
        embed = embed + direct(cache[act_name("pos_embed")][0])
    W_O = b.W_O  # [layer, head, d_head, d_model]
    T, dt = len(tgt), lg.dtype
    heads = torch.empty(n_layers, n_heads, T, device=dev, dtype=dt)
    attn_bias = torch.zeros(n_layers, T, device=dev, dtype=dt)
    mlp = torch.empty(n_layers, T, device=dev, dtype=dt)
    paths = torch.empty(n_layers, n_heads, T, len(tp.ids), device=dev, dtype=dt) if with_paths else None
    kv_of = torch.arange(n_heads, device=dev) // (n_heads // n_kv)
    for layer in range(n_layers):
        u_l, s_q = U, scale  # the answer direction seen by this layer's attention output; divisor per answer row
        if not post:
            wou = torch.einsum("hdm,mt->hdt", W_O[layer].to(work), U)  # W_O folded with the answer direction
        else:  # post-attention norm frozen: head outputs pass x -> x * g_post / scale_post[q]
            g_post, b_post = norm_affine(subject, b.blocks[layer].ln1_post._original_component,
                                         cache[act_name("ln1_post_normalized", layer)][0, qpos],
                                         cache[act_name("attn_out", layer)][0, qpos], "post-attention norm")
            if b_post is not None:
                raise UnpactError(f"direct logit attribution of '{subject.name}' is not supported: its "
                                  "post-attention norm has a bias")
            u_l = g_post.to(work)[:, None] * U
            s_q = scale * cache[act_name("ln1_post_scale", layer)][0, qpos, 0].to(work)
            wou = torch.einsum("hdm,mt->hdt", W_O[layer].to(work), u_l)
        z = cache[act_name("z", layer)][0, qpos].to(work)  # [T, head, d_head]
        heads[layer] = torch.einsum("thd,hdt->ht", z, wou) / s_q
        bo = _maybe_bias(b.blocks[layer].attn, "b_O")
        if bo is not None:
            attn_bias[layer] = (bo.to(work)[None] * u_l.T).sum(-1) / s_q
        mlp[layer] = direct(cache[act_name("mlp_out", layer)][0])
        if paths is not None:
            v = cache[act_name("v", layer)][0][:, kv_of].to(work)  # [src, head, d_head]
            vu = torch.einsum("shd,hdt->hts", v, wou)  # value . (W_O u) per source
            pat = cache[act_name("pattern", layer)][0][:, qpos].to(work)  # [head, T, src]
            paths[layer] = pat * vu / s_q[None, :, None]
    return Decomposition(tp, target, alt, embed, heads, attn_bias, mlp, ub, total, paths)


def dla_rows(d: Decomposition, model: str) -> list[dict[str, Any]]:
    """Tidy rows: one per (answer token, component)."""
    tp = d.tprobe
    rows: list[dict[str, Any]] = []
    method = "dla" if d.target == "logit" else "dla_diff"
    for t, pos in enumerate(tp.answer_positions):
        base = {"probe_id": tp.probe.id, "model": model, "method": method, "position": pos, "token": tp.tokens[pos]}
        rows.append({**base, "component": "embed", "score": float(d.embed[t])})
        rows.append({**base, "component": "unembed_bias", "score": float(d.unembed_bias[t])})
        for layer in range(d.heads.shape[0]):
            rows.append({**base, "layer": layer, "component": "mlp", "score": float(d.mlp[layer, t])})
            if float(d.attn_bias[layer, t]) != 0.0:
                rows.append({**base, "layer": layer, "component": "attn_bias", "score": float(d.attn_bias[layer, t])})
            for h in range(d.heads.shape[1]):
                rows.append({**base, "layer": layer, "head": h, "component": "head", "score": float(d.heads[layer, h, t])})
    return rows


def path_rows(d: Decomposition, model: str, per_answer_token: bool = False) -> pd.DataFrame:
    """Tidy path table: per (layer, head, source position), averaged over answer tokens by default."""
    if d.paths is None:
        raise ValueError("decomposition was computed without paths")
    tp = d.tprobe
    L, H, T, S = d.paths.shape
    p = d.paths if per_answer_token else d.paths.mean(2, keepdim=True)
    layer, head, t, src = torch.meshgrid(*(torch.arange(n) for n in p.shape), indexing="ij")
    df = pd.DataFrame(
        {
            "probe_id": tp.probe.id,
            "model": model,
            "method": "paths",
            "position": src.flatten().numpy(),
            "layer": layer.flatten().numpy(),
            "head": head.flatten().numpy(),
            "component": "head_path",
            "score": p.flatten().double().cpu().numpy(),
        }
    )
    df["token"] = [tp.tokens[i] for i in df["position"]]
    if per_answer_token:
        df["answer_position"] = [tp.prompt_len + i for i in t.flatten().tolist()]
    return make_table(df)


def decompose_all(subject: Subject, tprobes: Sequence[TokenizedProbe], target: Target = "logit",
                  with_paths: bool = True, progress: bool = False) -> list[Decomposition]:
    return [decompose(subject, tp, target, with_paths) for tp in tqdm(tprobes, desc="dla", disable=not progress)]


@register("dla", level="component")
def dla(subject: Subject, tprobes: Sequence[TokenizedProbe], target: Target = "logit", progress: bool = False) -> pd.DataFrame:
    """DLA of the answer logit (or ``target='logit_diff'``) per answer token and component."""
    rows = [r for d in decompose_all(subject, tprobes, target, False, progress) for r in dla_rows(d, subject.name)]
    return make_table(rows)


@register("paths", level="component")
def paths(subject: Subject, tprobes: Sequence[TokenizedProbe], target: Target = "logit", per_answer_token: bool = False,
          progress: bool = False) -> pd.DataFrame:
    """Head x source-token paths to the answer, averaged over answer tokens."""
    ds = decompose_all(subject, tprobes, target, True, progress)
    return pd.concat([path_rows(d, subject.name, per_answer_token) for d in ds], ignore_index=True)


def average_over_answer(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over the answer tokens of a per-answer-token DLA table (position/token left empty)."""
    keys = ["probe_id", "model", "method", "layer", "head", "component"]
    out = table.groupby(keys, dropna=False, sort=False)["score"].mean().reset_index()
    return make_table(out)


def path_token_attribution(d: Decomposition) -> Float[Tensor, " src"]:
    """Mechanistic per-source-token attribution: paths summed over layers and heads, mean over answer."""
    if d.paths is None:
        raise ValueError("decomposition was computed without paths")
    return d.paths.sum((0, 1)).mean(0)


@torch.no_grad()
def logit_lens(subject: Subject, tp: TokenizedProbe, hooks: Sequence[Any] = ()) -> pd.DataFrame:
    """Answer log-prob and rank read from the residual stream before each layer and after the last."""
    key = ("logit_lens", tp.probe.id, subject.name, tuple(tp.ids), tp.prompt_len)
    return memoized(subject, hooks, key, lambda: _logit_lens(subject, tp, hooks)).copy()


def _logit_lens(subject: Subject, tp: TokenizedProbe, hooks: Sequence[Any]) -> pd.DataFrame:
    cfg, b = subject.cfg, subject.bridge
    names = {act_name("resid_pre", layer) for layer in range(cfg.n_layers)} | {act_name("resid_post", cfg.n_layers - 1)}
    _, cache = run_cache(subject, tp.ids, names, hooks)
    idx = AnswerIndex.build([(tp.ids, tp.prompt_len)], subject.device)
    stages = [(layer, act_name("resid_pre", layer)) for layer in range(cfg.n_layers)]
    stages.append((cfg.n_layers, act_name("resid_post", cfg.n_layers - 1)))
    x = torch.stack([cache[name][0, idx.cols] for _, name in stages])  # [stage, T, d_model]
    S, T = x.shape[:2]
    # the model's own final norm, LM head and output transform read every stage (the last stage is the model)
    final_norm = b.ln_final._original_component
    logits = subject.backend.hf_view().logits(final_norm(x.flatten(0, 1)))
    lp_flat, _ = answer_logprobs(logits, idx.targets.repeat(S))
    lp = lp_flat.view(S, T)
    gold = logits.gather(1, idx.targets.repeat(S)[:, None])
    rank = (logits > gold).sum(-1).view(S, T)  # tokens strictly above the gold one (log_softmax is monotone)
    rows = []
    for i, (layer, _) in enumerate(stages):
        rows.append({"probe_id": tp.probe.id, "model": subject.name, "method": "logit_lens", "layer": layer,
                     "component": "resid_pre" if layer < cfg.n_layers else "resid_final",
                     "score": float(lp[i].mean()), "mean_rank": float(rank[i].double().mean()),
                     "top1": bool((rank[i] == 0).all())})
    return make_table(rows)


@dataclass
class AttentionView:
    """Attention patterns of chosen heads on one probe; displays as HTML heatmaps in a notebook (offline, no JS).

    ``patterns[f"L{layer}H{head}"]``: [query, key] weights; rows shown: the question and the answer-predicting
    positions."""

    tprobe: TokenizedProbe
    patterns: dict[str, Float[Tensor, "query key"]]

    def _repr_html_(self) -> str:
        tp = self.tprobe
        start = min(tp.attributable)
        return attention_html(tp.tokens, self.patterns, start, list(range(start, len(tp.ids) - 1)))


@torch.no_grad()
def attention_view(subject: Subject, tp: TokenizedProbe, heads: Sequence[tuple[int, int]]) -> AttentionView:
    """The attention patterns of ``heads`` ((layer, head) pairs) on ``tp``, from one cached forward."""
    bad = [(layer, h) for layer, h in heads if not (0 <= layer < subject.n_layers and 0 <= h < subject.cfg.n_heads)]
    if bad:
        raise UnpactError(f"no such head(s) {bad}: layers 0..{subject.n_layers - 1}, heads "
                          f"0..{subject.cfg.n_heads - 1}")
    names = {act_name("pattern", layer) for layer, _ in heads}
    _, cache = run_cache(subject, tp.ids, names)
    return AttentionView(tp, {f"L{layer}H{h}": cache[act_name("pattern", layer)][0, h].float().cpu()
                              for layer, h in heads})
