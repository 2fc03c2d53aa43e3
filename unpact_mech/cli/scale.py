"""``--executor ray[=ADDRESS]`` for the per-probe commands (attribute, dla, paths, compare, patch).

Each command's work on one probe is a module-level function here (Ray ships it to the actors by reference), run
through :func:`unpact_mech.runtime.executors.run_ray`; the command then writes the combined tables through the same code
as its single-process path. Probes that failed are listed at the end and the command exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import pandas as pd

from unpact_mech.core.errors import UnpactError

FAILED = 1  # exit status of a run in which some probes failed (the others were written)


def no_failures() -> list[tuple[int, str, str]]:
    """The failures of a single-process run: none (an error there stops the command)."""
    return []


def load_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """``load_model`` keyword arguments of the model options (what every actor loads with)."""
    from unpact_mech.model.chat import ChatArgs

    chat = ChatArgs(getattr(a, "system_prompt", None), getattr(a, "date_string", None))
    return {"dtype": a.dtype, "device": a.device, "device_map": a.device_map, "max_memory": a.max_memory,
            "trust_remote_code": a.trust_remote_code, "allow_pickle": a.allow_pickle,
            **({} if chat == ChatArgs() else {"chat": chat})}


def loads_beyond_config(a: argparse.Namespace) -> bool:
    """Whether the model options ask for what a study config cannot state (placement over devices, remote code,
    pickled weights): then the CLI loads the model and hands it to the study."""
    return bool(a.device_map or a.max_memory or a.trust_remote_code or a.allow_pickle)


def uses_ray(a: argparse.Namespace) -> bool:
    return getattr(a, "executor", ("local", None))[0] == "ray"


def check_executor(a: argparse.Namespace) -> None:
    """Before anything loads: Ray importable and the address reachable; a Ray run needs --out (its parts go
    beside it)."""
    if not uses_ray(a):
        return
    from unpact_mech.runtime.executors import check_ray

    if getattr(a, "out", None) is None:
        raise UnpactError("--executor ray streams its parts beside --out; give --out FILE")
    if getattr(a, "plan", False):
        raise UnpactError("--plan costs a run in this process; drop --executor ray to see it (each actor runs the "
                          "same steps on its share of the probes)")
    check_ray(a.executor[1])


def attribute_work(models: list[Any], probe: Any, method: str, fmt: str, target: str | None = None) -> dict:
    from unpact_mech.attribution import attribute
    from unpact_mech.probes import tokenize_probes

    (subject,) = models
    tps = tokenize_probes(subject, [probe], fmt)
    kw = {} if target is None else {"target": target}
    return {"table": attribute(subject, tps, method=method, **kw)}


def compare_work(models: list[Any], probe: Any, alpha: float, beta: int, max_keytokens: int | None,
                 fmt: str) -> dict:
    from unpact_mech.analysis.compare import compare
    from unpact_mech.probes.keytokens import KeyTokenParams

    base, unl = models
    return {"per_probe": compare(base, unl, [probe], KeyTokenParams(alpha, beta, max_keytokens), fmt=fmt).per_probe}


def patch_work(models: list[Any], probe: Any, method: str, kinds: Sequence[str], layer_step: int,
               directions: Sequence[str], fmt: str, verify: int) -> dict:
    from unpact_mech.patching import patch
    from unpact_mech.probes import tokenize_probes

    base, unl = models
    layers = list(range(0, base.n_layers, layer_step))
    (tp,) = tokenize_probes(base, [probe], fmt)
    pos, heads = [], []
    for d in directions:
        p, h = patch(base, unl, tp, method, kinds, layers, direction=d, verify=verify)
        pos.append(p)
        heads.append(h)
    return {"positions": pd.concat(pos, ignore_index=True), "heads": pd.concat(heads, ignore_index=True)}


def run(a: argparse.Namespace, command: str, options: dict[str, Any], specs: Sequence[str], work: Any,
        probes: Sequence[Any]) -> tuple[dict[str, pd.DataFrame], list[tuple[int, str, str]]]:
    """Run ``work`` per probe on Ray; the combined tables and the failures (also printed)."""
    from unpact_mech.runtime.executors import ProbeJob, parts_dir, run_ray

    kw = load_kwargs(a)
    job = ProbeJob(command, {**options, **{k: str(v) for k, v in kw.items()}}, tuple((s, kw) for s in specs), work)
    parts = parts_dir(a.out)
    res = run_ray(job, probes, parts, address=a.executor[1], actors=a.actors, threads=a.threads_per_actor)
    print(f"[ray] {res.computed} probe(s) run here, {len(probes) - res.computed} resumed from {parts}",
          file=sys.stderr)
    for i, pid, msg in res.failures:
        print(f"[ray] probe {i} ({pid}) failed: {msg}", file=sys.stderr)
    if res.failures:
        print(f"[ray] {len(res.failures)} of {len(probes)} probe(s) failed; the rest are written. Fix them and rerun "
              "the same command (done probes are kept)", file=sys.stderr)
    return res.tables, res.failures


def attribute_job(method: str, fmt: str, target: str | None = None) -> Any:
    return partial(attribute_work, method=method, fmt=fmt, target=target)


def compare_job(a: argparse.Namespace) -> Any:
    return partial(compare_work, alpha=a.alpha, beta=a.beta, max_keytokens=a.max_keytokens, fmt=a.format)


def patch_job(a: argparse.Namespace) -> Any:
    return partial(patch_work, method=a.method, kinds=tuple(a.kinds), layer_step=a.layer_step,
                   directions=tuple(a.direction), fmt=a.format, verify=a.verify)

