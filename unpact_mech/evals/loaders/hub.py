"""MUSE-News, MUSE-Books, WMDP and TOFU through ``datasets.load_dataset``: hub ids by default, or local
json / jsonl / parquet files in the same schema via ``source``. Schema errors name the dataset, split and fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.evals.loaders import Passage, register_benchmark
from unpact_mech.probes import Probe


class SchemaError(UnpactError):
    """A dataset split that lacks the fields a loader needs."""


def _rows(hub_id: str, config: str | None, split: str, source: Any, fields: tuple[str, ...]) -> list[dict]:
    from datasets import load_dataset

    if source is not None:
        path = Path(source)
        if not path.exists():
            raise UnpactError(f"{hub_id}: local source '{path}' does not exist")
        suffix = path.suffix.lower()
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if kind is None:
            raise UnpactError(f"{hub_id}: unsupported local file type '{suffix}' (use .json, .jsonl or .parquet)")
        if path.is_dir() or path.stat().st_size == 0:
            raise UnpactError(f"{hub_id}: local source '{path}' is empty or not a file")
        try:
            ds = load_dataset(kind, data_files={split: str(path)}, split=split)
        except Exception as err:  # datasets wraps parse errors in several types
            raise UnpactError(f"{hub_id}: cannot read local source '{path}' as {kind}: {err}") from err
        if len(ds) == 0:
            raise UnpactError(f"{hub_id}: local source '{path}' holds no rows")
    else:
        try:
            ds = load_dataset(hub_id, config, split=split)
        except ValueError as err:
            raise SchemaError(f"{hub_id} ({config}): no split '{split}': {err}") from err
        except (ConnectionError, OSError) as err:
            raise UnpactError(
                f"cannot reach the hub dataset {hub_id} ({config}, {split}) from here (offline?): download it "
                "where there is internet and pass the local file with --source (json, jsonl or parquet)"
            ) from err
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise SchemaError(
            f"{hub_id} ({config}), split '{split}': missing field(s) {missing}; expected {list(fields)}, "
            f"found {ds.column_names}"
        )
    return [dict(r) for r in ds]


MUSE_SUBSETS = {
    "knowmem": ({"forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"}, ("question", "answer")),
    "verbmem": ({"forget"}, ("prompt", "gt")),
    "raw": ({"forget", "retain1", "retain2", "holdout"}, ("text",)),
    "privleak": ({"forget", "holdout", "retain"}, ("text",)),  # MUSE_MIA.yaml; muse_bench data/*/privleak
}


def _muse(hub_id: str, name: str, subset: str | None, split: str | None, source: Any) -> list[Any]:
    subset = subset or "knowmem"
    if subset not in MUSE_SUBSETS:
        raise UnpactError(f"{name}: unknown subset '{subset}'; subsets are {sorted(MUSE_SUBSETS)}")
    splits, fields = MUSE_SUBSETS[subset]
    split = split or sorted(splits)[0]
    if split not in splits:
        raise SchemaError(f"{name} {subset}: no split '{split}'; splits are {sorted(splits)} (fields {list(fields)})")
    rows = _rows(hub_id, subset, split, source, fields)
    if subset == "raw":
        return [r["text"] for r in rows]  # a corpus: raw text for unlearning
    if subset == "privleak":
        return [Passage(f"{name}-privleak-{split}-{i}", r["text"], split) for i, r in enumerate(rows)]
    role = "forget" if split.startswith("forget") else "retain"
    if subset == "knowmem":
        return [Probe(f"{name}-{split}-{i}", r["question"], str(r["answer"]), role, domain=name) for i, r in enumerate(rows)]
    return [Probe(f"{name}-verbmem-{i}", r["prompt"], r["gt"], role, domain=name) for i, r in enumerate(rows)]


@register_benchmark("muse-news")
def muse_news(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Any]:
    """MUSE-News (``muse-bench/MUSE-News``): knowmem QA, verbmem continuations or raw text."""
    return _muse("muse-bench/MUSE-News", "muse-news", subset, split, source)


@register_benchmark("muse-books")
def muse_books(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Any]:
    """MUSE-Books (``muse-bench/MUSE-Books``): knowmem QA, verbmem continuations or raw text."""
    return _muse("muse-bench/MUSE-Books", "muse-books", subset, split, source)


WMDP_CONFIGS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")


@register_benchmark("wmdp")
def wmdp(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Probe]:
    """WMDP (``cais/wmdp``) multiple choice as probes: answer = the correct choice; ``meta`` has all choices."""
    subset = subset or "wmdp-bio"
    if subset not in WMDP_CONFIGS:
        raise UnpactError(f"wmdp: unknown subset '{subset}'; subsets are {list(WMDP_CONFIGS)}")
    split = split or "test"
    rows = _rows("cais/wmdp", subset, split, source, ("question", "choices", "answer"))
    out = []
    for i, r in enumerate(rows):
        choices = [str(c) for c in r["choices"]]
        k = int(r["answer"])
        if not 0 <= k < len(choices):
            raise SchemaError(f"cais/wmdp ({subset}) row {i}: answer index {k} outside {len(choices)} choices")
        out.append(Probe(f"{subset}-{i}", r["question"], choices[k], "forget", domain=subset,
                         meta={"choices": choices, "answer_index": k}))
    return out


TOFU_CONFIGS = {
    **{f"forget{n}": ("question", "answer") for n in ("01", "05", "10")},
    **{f"retain{n}": ("question", "answer") for n in ("90", "95", "99")},
    **{f"forget{n}_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer") for n in ("01", "05", "10")},
    "retain_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    # the model-utility sets: the answer is the correct one, perturbed_answer the wrong ones (open-unlearning's
    # TOFU_QA_ra / TOFU_QA_ra_pert answer keys); in meta as 'tofu_set' for the task's nine utility numbers
    "real_authors_perturbed": ("question", "answer", "perturbed_answer"),
    "world_facts_perturbed": ("question", "answer", "perturbed_answer"),
}


@register_benchmark("tofu")
def tofu(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Probe]:
    """TOFU (``locuslab/TOFU``): forget/retain splits and the perturbed variants (alternatives in ``meta``)."""
    subset = subset or "forget01"
    if subset not in TOFU_CONFIGS:
        raise UnpactError(f"tofu: unknown subset '{subset}'; subsets are {sorted(TOFU_CONFIGS)}")
    fields = TOFU_CONFIGS[subset]
    rows = _rows("locuslab/TOFU", subset, split or "train", source, fields)
    role = "forget" if subset.startswith("forget") else ("general" if "real" in subset or "world" in subset else "retain")
    out = []
    for i, r in enumerate(rows):
        meta = {k: r[k] for k in fields[2:]} | ({"options": r["options"]} if "options" in r else {}) | (
            {"tofu_set": subset.removesuffix("_perturbed")} if role == "general" else {})
        out.append(Probe(f"tofu-{subset}-{i}", r["question"], str(r["answer"]), role, domain="tofu", meta=meta))
    return out
