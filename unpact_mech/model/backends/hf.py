"""The plain Hugging Face backend: a causal LM with a KV cache (the fast path of scoring, leave-one-out and
generation, the unembedding of hidden states, gradients).

:func:`shared_view` builds an unwrapped HF causal LM whose parameters and buffers *are* another module's
tensors (for example the TransformerLens bridge's: it boots with ``no_processing=True``, so the weights are the
loaded ones and the view computes the bridge's log-probs with no second copy).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import AutoModelForCausalLM, DynamicCache

from unpact_mech.hooks import Emphasis
from unpact_mech.model.backends import HOOKS, KV_PREFIX, Hook, first_param
from unpact_mech.model.backends.kernel import OutputTransform, unembed


def _strip(name: str) -> str:
    return name.replace("._original_component", "")


def shared_view(wrapped: Any, config: Any) -> Any:
    """An HF causal LM built on the meta device whose tensors are ``wrapped``'s own (names matched after
    removing TransformerLens's ``._original_component``). Nothing is copied; read-only use."""
    tensors = {_strip(k): v for k, v in wrapped.named_parameters(remove_duplicate=False)}
    tensors.update({_strip(k): v for k, v in wrapped.named_buffers(remove_duplicate=False)})
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    names = [k for k, _ in view.named_parameters(remove_duplicate=False)]
    names += [k for k, _ in view.named_buffers(remove_duplicate=False)]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise RuntimeError(f"cannot build a shared HF view: tensors {missing[:4]} not found in the wrapped model")
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = view.get_submodule(mod_name)
        t = tensors[n]
        if leaf in mod._parameters:
            mod._parameters[leaf] = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[leaf] = t
    return view.eval()


class HFBackend:
    """A plain HF causal LM: full forwards, and hidden states with a KV cache (capability ``kv_prefix``)."""

    name = "hf"

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.transform = OutputTransform.from_config(model.config)
        self.capabilities = frozenset({KV_PREFIX})
        self.body = model.base_model  # the decoder without its LM head (``model`` or ``transformer``)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.body.forward).parameters else "past_key_values"
        self._sites: DecoderSites | None = None

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return first_param(self.model).device

    @property
    def dtype(self) -> torch.dtype:
        return first_param(self.model).dtype

    def supports_hook(self, name: str) -> bool:
        return False

    @contextmanager
    def attached(self, hooks: Sequence[Hook]) -> Iterator[Any]:
        if hooks:
            raise ValueError(f"the {self.name} backend runs no hooks (capability '{HOOKS}')")
        yield self

    def attached_hooks(self) -> int:
        return 0

    def hf_view(self) -> HFBackend:
        return self

    @torch.no_grad()
    def forward(self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos vocab"]:
        if hooks:
            raise ValueError(f"the {self.name} backend runs no hooks (capability '{HOOKS}')")
        return self.model(input_ids=ids).logits

    def new_cache(self) -> Any:
        return DynamicCache(config=self.model.config)

    @torch.no_grad()
    def hidden(
        self, ids: Int[Tensor, "batch pos"], cache: Any, position_ids: Int[Tensor, "batch pos"] | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """Final hidden states (after the final norm), extending ``cache`` in place."""
        kw: dict[str, Any] = {self._cache_kw: cache}
        if position_ids is not None:
            kw["position_ids"] = position_ids
        return self.body(input_ids=ids, use_cache=True, **kw).last_hidden_state

    @property
    def sites(self) -> DecoderSites:
        if self._sites is None:
            self._sites = DecoderSites.of(self.model)
        return self._sites

    @torch.no_grad()
    def hidden_from(
        self,
        layer: int,
        resid: Float[Tensor, "batch pos d_model"],
        cache: Any,
        position_ids: Int[Tensor, "batch pos"],
        edits: Mapping[tuple[str, int], SiteFn] | None = None,
        stop: int | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Final hidden states of a forward that starts from ``resid`` (the residual entering ``layer``) at
        ``position_ids``, after the positions already in ``cache``, with site ``edits``; layers below ``layer``
        (and after ``stop``, when given: then the output is not the model's) are not computed. ``cache`` is
        extended in place at the layers computed."""
        ids = torch.zeros(resid.shape[:2], dtype=torch.long, device=resid.device)  # embeddings are replaced
        with self.sites.starting_at(layer, resid, stop), self.sites.edited(edits or {}):
            return self.body(input_ids=ids, position_ids=position_ids, use_cache=True,
                             **{self._cache_kw: cache}).last_hidden_state

    def logits(self, hidden: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
        """The model's final logits from final hidden states (LM head, then its output transform)."""
        return unembed(self.model.get_output_embeddings(), hidden, self.transform)


    @torch.no_grad()
    def emphasis_prefill(
        self,
        rows: Sequence[Sequence[int]],
        emphasis: Emphasis | None = None,
        pad_id: int = 0,
        extra: int = 0,
        share_until: int | None = None,
    ) -> EmphasisRun:
        """Run token rows with a KV cache, with ``emphasis`` (row r at ``emphasis.positions[r]``, in row
        coordinates) in its KV-cache form:

        * mode ``embed``: the input embeddings at those positions are multiplied by the factor;
        * mode ``attention``: log(factor) is added to every head's attention score on those keys, for every
          query (an additive 4D attention mask: the bias of the ``hook_attn_scores`` steering hook).

        The rows' common prefix (up to ``share_until`` and never past an emphasised position) is run once and
        its cache repeated; the rest is left-padded (position ids restart at each row's first real token after
        the prefix; padding is masked with the dtype's minimum, not -inf, so padded rows stay finite). ``extra``
        reserves mask room for that many generated tokens. Equal to the hooked bridge run: tested.
        """
        dev, n = self.device, len(rows)
        route = emphasis.mode if emphasis is not None else None
        positions = emphasis.positions if emphasis is not None else None
        factor = emphasis.factor if emphasis is not None else 1.0
        common = 0
        limit = min([len(r) - 1 for r in rows] + ([share_until] if share_until is not None else []))
        limit = min([limit] + [min(p) for p in (positions or []) if p])
        while common < limit and all(r[common] == rows[0][common] for r in rows):
            common += 1
        cache = self.new_cache()
        if common:
            self.hidden(torch.tensor([list(rows[0][:common])], device=dev), cache)
            cache.batch_repeat_interleave(n)
        sufs = [list(r[common:]) for r in rows]
        width = max(len(x) for x in sufs)
        off = [width - len(x) for x in sufs]
        ids = torch.tensor([[pad_id] * o + x for o, x in zip(off, sufs)], device=dev)
        total = common + width + extra
        valid = torch.zeros(n, total, dtype=torch.bool, device=dev)
        valid[:, :common] = True
        bias = torch.zeros(n, total, dtype=self.dtype, device=dev)
        scale = torch.ones(n, width, 1, dtype=self.dtype, device=dev)
        log_f = emphasis.log_factor if emphasis is not None else 0.0
        for r, o in enumerate(off):
            valid[r, common + o :] = True
            cols = [common + o + p - common for p in (positions[r] if positions is not None else [])]
            if route == "attention" and cols:
                bias[r, cols] = log_f
            if route == "embed" and cols:
                scale[r, [c - common for c in cols]] = factor
        low = torch.finfo(self.dtype).min
        key_ok = valid[:, None, : common + width].clone().expand(n, width, common + width).clone()
        key_ok[:, :, common:] &= torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        mask = torch.where(key_ok, bias[:, None, : common + width], low)[:, None]
        pos = (common + torch.arange(width, device=dev)[None] - torch.tensor(off, device=dev)[:, None]).clamp(min=common)
        kw: dict[str, Any] = {"input_ids": ids}
        if route == "embed":
            kw = {"inputs_embeds": self.model.get_input_embeddings()(ids) * scale}
        h = self.body(**kw, attention_mask=mask, position_ids=pos, use_cache=True,
                      **{self._cache_kw: cache}).last_hidden_state
        return EmphasisRun(h, cache, valid, bias, common, width, off)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        limits: Sequence[int],
        stop: Sequence[int],
        emphasis: Emphasis | None = None,
        pad_id: int = 0,
    ) -> list[list[int]]:
        """Greedy continuations with a KV cache and optional emphasis (:meth:`emphasis_prefill`), which stays
        active for every generated query. A row stops at a ``stop`` token (not included) or after its limit."""
        steps = max(limits, default=0)
        if not prompts or steps == 0:
            return [[] for _ in prompts]
        run = self.emphasis_prefill(prompts, emphasis, pad_id, extra=steps)
        low = torch.finfo(self.dtype).min
        start = run.prefix + run.width
        logits = self.logits(run.hidden[:, -1])
        new: list[list[int]] = [[] for _ in prompts]
        done = [lim == 0 for lim in limits]
        stop_set = set(stop)
        for t in range(steps):
            nxt = logits.argmax(-1)
            for r, tok in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                if tok in stop_set:
                    done[r] = True
                    continue
                new[r].append(tok)
                done[r] = len(new[r]) >= limits[r]
            if all(done) or t == steps - 1:
                break
            k = start + t + 1  # keys after appending this step's token
            step_mask = torch.where(run.valid[:, :k], run.bias[:, :k], low)[:, None, None, :]
            step_pos = torch.tensor([[start - o + t] for o in run.offsets], device=self.device)
            h = self.body(input_ids=nxt[:, None], attention_mask=step_mask, position_ids=step_pos, use_cache=True,
                          **{self._cache_kw: run.cache}).last_hidden_state
            logits = self.logits(h[:, -1])
        return new


@dataclass
class EmphasisRun:
    """What :meth:`HFBackend.emphasis_prefill` leaves: final hidden states of the left-padded suffixes
    (``[rows, width, d_model]``; row r's token j of the suffix sits at column ``offsets[r] + j``), the cache,
    key validity and attention bias over prefix + suffix (+ room for generation), and the shared prefix length."""

    hidden: Float[Tensor, "batch width d_model"]
    cache: Any
    valid: Tensor
    bias: Tensor
    prefix: int
    width: int
    offsets: list[int]


SITE_KINDS = ("resid_pre", "attn_out", "mlp_out", "z", "pattern")
SiteFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class DecoderSites:
    """Where TransformerLens's per-layer hook points sit in a plain HF decoder: ``resid_pre`` is a layer's input,
    ``attn_out`` / ``mlp_out`` the outputs of its attention / MLP modules, ``z`` (per head) the input of the
    attention's output projection, ``[.., n_heads * d_head]`` head-major, and ``pattern`` the attention
    probabilities ``[batch, head, query, key]`` (the eager attention's second output)."""

    layers: tuple[Any, ...]
    attn: tuple[Any, ...]
    mlp: tuple[Any, ...]
    proj: tuple[Any, ...]
    n_heads: int

    @classmethod
    def of(cls, model: Any) -> DecoderSites:
        body = model.base_model
        layers = next((getattr(body, a) for a in ("layers", "h") if hasattr(body, a)), None)
        if layers is None:
            raise NotImplementedError(f"{type(body).__name__}: no decoder layer list (layers / h)")

        def child(m: Any, names: tuple[str, ...]) -> Any:
            found = next((getattr(m, a) for a in names if hasattr(m, a)), None)
            if found is None:
                raise NotImplementedError(f"{type(m).__name__} has none of {names}")
            return found

        attn = tuple(child(x, ("self_attn", "attn")) for x in layers)
        cfg = model.config
        n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        return cls(tuple(layers), attn, tuple(child(x, ("mlp",)) for x in layers),
                   tuple(child(a, ("o_proj", "c_proj", "out_proj", "dense")) for a in attn), n_heads)

    @contextmanager
    def edited(self, edits: Mapping[tuple[str, int], SiteFn]) -> Iterator[None]:
        """``edits[(kind, layer)] = fn``: the site's activation ``a`` becomes ``fn(a)`` (``[batch, pos, d]``, or
        ``[batch, pos, head, d_head]`` for ``z``) for a ``with`` block; hooks removed on exit."""
        with ExitStack() as stack:
            for (kind, layer), fn in edits.items():
                stack.enter_context(self._hook(kind, layer, fn))
            yield

    @contextmanager
    def _hook(self, kind: str, layer: int, fn: SiteFn) -> Iterator[None]:
        if kind == "resid_pre":
            def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
                if args:
                    return (fn(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

            h = self.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
        elif kind == "z":
            h_ = self.n_heads

            def pre_z(mod: Any, args: tuple) -> Any:
                x = args[0]
                z = fn(x.reshape(*x.shape[:-1], h_, x.shape[-1] // h_))
                return (z.reshape(x.shape), *args[1:])

            h = self.proj[layer].register_forward_pre_hook(pre_z)
        elif kind == "pattern":
            def probs(mod: Any, args: tuple, out: Any) -> Any:
                if not isinstance(out, tuple) or out[1] is None:
                    raise NotImplementedError(f"{type(mod).__name__} returns no attention probabilities")
                return (out[0], fn(out[1]), *out[2:])

            h = self.attn[layer].register_forward_hook(probs)
        elif kind in ("attn_out", "mlp_out"):
            def post(mod: Any, args: tuple, out: Any) -> Any:
                if isinstance(out, tuple):
                    return (fn(out[0]), *out[1:])
                return fn(out)

            h = (self.attn if kind == "attn_out" else self.mlp)[layer].register_forward_hook(post)
        else:
            raise ValueError(f"unknown site kind {kind!r}: {SITE_KINDS}")
        try:
            yield
        finally:
            h.remove()

    @contextmanager
    def starting_at(self, layer: int, resid: Tensor, stop: int | None = None) -> Iterator[None]:
        """Layers below ``layer`` (and after ``stop``) pass their input through (they are not computed), and
        ``layer``'s input is ``resid``: a forward from the residual stream entering ``layer``. Their KV caches
        are left as they are."""
        skipped = self.layers[:layer] + (self.layers[stop + 1 :] if stop is not None else ())
        for m in skipped:
            m.forward = _pass_through
        try:
            with self.edited({("resid_pre", layer): lambda a: resid}):
                yield
        finally:
            for m in skipped:
                del m.forward


def _pass_through(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return hidden_states


def expand_cache(cache: Any, n: int) -> Any:
    """A copy of a one-row ``cache`` repeated for ``n`` rows (the cache's own bookkeeping, sliding windows
    included, is kept: nothing is sliced by hand)."""
    kv = copy.deepcopy(cache)
    kv.batch_repeat_interleave(n)
    return kv
