"""Run a per-probe job on a Ray cluster (``--executor ray[=ADDRESS]``), resumably.

A :class:`ProbeJob` is ``work(models, probe) -> {table name: DataFrame}`` for one probe, with the model specs
every worker loads. :func:`run_ray` makes the probes a Ray Dataset and maps them over an actor pool
(``map_batches``, one probe per batch): one loaded set of models per actor, ``num_gpus=1`` per actor where the
cluster has GPUs (the models go on the actor's GPU unless ``device``/``device_map`` say otherwise), else CPU
actors with ``threads`` torch threads each. Every probe's tables stream into the parts directory as they come
(``<table>/<index>.parquet``, then ``done/<index>.json``: its error if any, seconds, actor pid and peak RSS),
beside ``run.json`` (the command, its options, the probe ids and their run key, as the shard sidecars record).

- Resume: rerunning the same command skips the probes already done; a part of another run is refused, naming
  what differs.
- Failures: an actor that dies is restarted and its probe retried by Ray (Ray Data's actor pools default to
  ``max_restarts=-1``, ``max_task_retries=-1``); a probe that raises a user error (:class:`UnpactError`) is
  recorded with its message in ``done/<index>.json`` and the others go on; it is tried again on a rerun.

The combined tables are the per-probe tables concatenated in probe order, as the single-process commands build
them, so the caller writes them through the same code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write, atomic_write_json
from unpact_mech.core.log import say
from unpact_mech.model.loading import data_hash, load_model
from unpact_mech.probes import Probe

__all__ = ["ProbeJob", "RayResult", "check_ray", "parts_dir", "run_ray"]

Work = Callable[[list[Any], Probe], dict[str, pd.DataFrame]]


@dataclass(frozen=True)
class ProbeJob:
    """What each worker loads (``models``: (spec, ``load_model`` keyword arguments)) and runs per probe."""

    command: str
    options: dict[str, Any]
    models: tuple[tuple[str, dict[str, Any]], ...]
    work: Work


@dataclass
class RayResult:
    """The combined tables (probe order) and the probes that failed: (index, probe id, message)."""

    tables: dict[str, pd.DataFrame]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    computed: int = 0  # probes run by this call (the others were done before)


def parts_dir(out: str | Path) -> Path:
    """Where a Ray run of ``--out OUT`` streams its parts: ``OUT.ray/``."""
    return Path(str(out).rstrip("/") + ".ray")


def check_ray(address: str | None) -> None:
    """Ray importable and, for an address, reachable: one clear error before any model loads."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise UnpactError("--executor ray needs Ray Data, which is not installed: pip install 'ray[data]'") from None
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise UnpactError(f"--executor ray={address}: cannot reach the Ray cluster there ({err}); start it "
                          "(`ray start --head`) or give the address `ray status` prints") from None


def _meta(job: ProbeJob, probes: Sequence[Probe]) -> dict[str, Any]:
    ids = [p.id for p in probes]
    return {"command": job.command, "options": job.options, "n_probes": len(ids),
            "run": data_hash({"command": job.command, "options": job.options, "probes": ids,
                              "probe_data": [p.to_dict() for p in probes]})}


def _check_run(parts: Path, meta: dict[str, Any]) -> None:
    """Refuse a parts directory written by another command, option set or probe set (naming what differs)."""
    f = parts / "run.json"
    if not f.exists():
        if parts.exists() and any(parts.iterdir()):
            raise UnpactError(f"{parts} exists and is not a Ray run's parts (no run.json); move it away or give "
                              "another --out")
        atomic_write_json(f, meta)
        return
    old = json.loads(f.read_text())
    if old.get("run") == meta["run"]:
        return
    diff = [f"command {old.get('command')!r} -> {meta['command']!r}"] if old.get("command") != meta["command"] else []
    opts = old.get("options", {})
    diff += [f"{k}: {opts.get(k)!r} -> {meta['options'].get(k)!r}" for k in sorted(set(opts) | set(meta["options"]))
             if opts.get(k) != meta["options"].get(k)]
    if not diff:
        diff = [f"the probes ({old.get('n_probes')} -> {meta['n_probes']}, or their text)"]
    raise UnpactError(f"{parts} holds the parts of another run ({'; '.join(diff)}); rerun the same command to "
                      "resume it, or give another --out (or delete that directory) to start this one")


class _Worker:
    """One Ray actor: the job's models, loaded once; each batch is one probe's tables as parquet bytes."""

    def __init__(self, job: ProbeJob, threads: int) -> None:
        torch.set_num_threads(threads)
        self.job = job
        # a GPU actor (Ray set CUDA_VISIBLE_DEVICES to its GPU) places its models there unless told otherwise
        gpu = torch.cuda.is_available()
        self.models = [load_model(spec, **({**kw, "device": "cuda"} if gpu and kw.get("device") is None
                                           and kw.get("device_map") is None else kw)) for spec, kw in job.models]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows: dict[str, list[Any]] = {"index": [], "table": [], "payload": [], "error": [], "seconds": []}

        def add(i: int, name: str, payload: bytes, error: str, seconds: float = 0.0) -> None:
            for k, v in zip(rows, (i, name, payload, error, seconds)):
                rows[k].append(v)

        for i, text in zip(batch["index"], batch["probe"]):
            t0 = time.perf_counter()
            try:
                tables = self.job.work(self.models, Probe.from_dict(json.loads(text)))
            except UnpactError as err:
                add(int(i), "", b"", str(err) or type(err).__name__, time.perf_counter() - t0)
                continue
            for name, df in tables.items():
                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                add(int(i), name, buf.getvalue(), "")
            add(int(i), "", b"", "", time.perf_counter() - t0)  # the probe's last row: its done marker
        n = len(rows["index"])
        return {"index": np.array(rows["index"], dtype=np.int64), "table": np.array(rows["table"], dtype=object),
                "payload": np.array(rows["payload"], dtype=object), "error": np.array(rows["error"], dtype=object),
                "seconds": np.array(rows["seconds"], dtype=np.float64), "pid": np.full(n, os.getpid()),
                "max_rss_mb": np.full(n, _max_rss_mb())}


def _done(parts: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for f in (parts / "done").glob("*.json"):
        try:
            out[int(f.stem)] = json.loads(f.read_text())
        except ValueError:
            continue  # a marker is written atomically; anything else there is ignored
    return out


def run_ray(job: ProbeJob, probes: Sequence[Probe], parts: str | Path, address: str | None = None,
            actors: int | None = None, threads: int = 1, progress: bool = True) -> RayResult:
    """Run ``job`` on every probe over a Ray actor pool, streaming into ``parts`` and skipping probes done there.

    ``address``: None starts a local cluster (shut down at the end); otherwise the job joins that cluster.
    ``actors``: the pool size (default: the cluster's GPUs, else its CPUs // ``threads``)."""
    check_ray(address)
    import ray
    import ray.data

    parts = Path(parts)
    if len({p.id for p in probes}) != len(probes):
        raise UnpactError("probe ids must be unique for a Ray run (each probe's parts are kept by its index and id)")
    _check_run(parts, _meta(job, probes))
    done = {i: m for i, m in _done(parts).items() if not m.get("error")}
    todo = [(i, p) for i, p in enumerate(probes) if i not in done]
    started = False
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True, configure_logging=True)
            started = address is None
        try:
            _map(job, todo, parts, actors, threads, progress, ray)
        finally:
            if started:
                ray.shutdown()
    marks = _done(parts)
    failures = [(i, probes[i].id, str(marks[i]["error"])) for i in sorted(marks) if marks[i].get("error")]
    names = sorted({f.parent.name for f in parts.glob("*/*.parquet")})
    tables = {}
    for name in names:
        frames = [pd.read_parquet(parts / name / f"{i}.parquet") for i in range(len(probes))
                  if (parts / name / f"{i}.parquet").exists() and not marks.get(i, {}).get("error")]
        tables[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    missing = [probes[i].id for i in range(len(probes)) if i not in marks]
    if missing:
        raise UnpactError(f"the Ray run ended without {len(missing)} probe(s) ({', '.join(missing[:5])}); rerun the "
                          "same command to finish them")
    return RayResult(tables, failures, len(todo))


def _map(job: ProbeJob, todo: list[tuple[int, Probe]], parts: Path, actors: int | None, threads: int,
         progress: bool, ray: Any) -> None:
    """Map the probes over the actor pool and write each probe's parts as its rows arrive."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    size = actors or (gpus if gpus else max(1, int(res.get("CPU", 1)) // threads))
    size = min(size, len(todo))
    ds = ray.data.from_items([{"index": i, "probe": json.dumps(p.to_dict())} for i, p in todo],
                             override_num_blocks=len(todo))
    placement: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": threads}
    mapped = ds.map_batches(_Worker, fn_constructor_args=(job, threads), batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=size), **placement)
    t0, n, ids = time.perf_counter(), 0, {i: p.id for i, p in todo}
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for i, name, payload, error, sec, pid, rss in zip(batch["index"], batch["table"], batch["payload"],
                                                          batch["error"], batch["seconds"], batch["pid"],
                                                          batch["max_rss_mb"]):
            i = int(i)
            if name:
                _write_bytes(parts / str(name) / f"{i}.parquet", bytes(payload))
                continue
            atomic_write_json(parts / "done" / f"{i}.json", {"probe_id": ids[i], "error": str(error) or None,
                                                             "seconds": float(sec), "actor_pid": int(pid),
                                                             "actor_max_rss_mb": float(rss)})
            n += 1
            if progress:
                say(f"[ray] {n}/{len(todo)} probes ({time.perf_counter() - t0:.0f} s, {size} actors)", stderr=True)


def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(path, write)


def _max_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
