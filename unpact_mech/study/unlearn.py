"""The study's unlearning stage: one checkpoint per method, with its frontier points along the trajectory."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unpact_mech.core.io import atomic_write_json
from unpact_mech.core.log import say
from unpact_mech.model import loading as models
from unpact_mech.model.loading import data_hash, read_provenance
from unpact_mech.model.subject import Subject
from unpact_mech.routes.frontier import interpolated, snapshot_subject
from unpact_mech.runtime.pipeline import make_stamp, stage
from unpact_mech.study.base import LazyBase
from unpact_mech.study.settings import CALIBRATION, method_settings, probe_key
from unpact_mech.unlearning import UnlearningError, unlearn

# the frontier's measurements run inside this stage (experiments.findings builds them)
CODE = ("unpact_mech.study.unlearn", "unpact_mech.study.measure")


def unlearn_stage(lazy: LazyBase, method: str, forget: list, retain: list, out: Path, steps: int | None,
                  target: float, progress: bool = True, on_change: str = "recompute",
                  frontier: Callable[[str, Any, float], list[dict]] | None = None) -> tuple[Path, list[dict]]:
    """``OUT/checkpoints/METHOD`` trained with the demo's settings, and its frontier points (``frontier(name,
    subject, strength)`` at every snapshot along the trajectory); both reused while their stamp (model, data,
    settings, seed) is unchanged."""
    points_file = out / "checkpoints" / f"{method}.frontier.json"
    if method in lazy.given:
        return _given_stage(lazy, method, out, points_file, on_change, frontier)
    ckpt = out / "checkpoints" / method
    settings = method_settings(method, steps, target)
    stamp = checkpoint_stamp(lazy, method, forget, retain, steps, target)

    def train() -> tuple[Path, list[dict]]:
        base = lazy.get()
        points: list[dict] = []
        every = lazy.budget.frontier.every

        def snap(step: int, model: Any) -> None:
            if frontier is not None and method != "task_vector" and step % every == 0:
                points.extend(frontier(f"{method}@{step}", snapshot_subject(model, base.tokenizer, f"{method}@{step}",
                                                                            base.source), float(step)))

        # no mid-run resume state for these short runs (saving it costs more than redoing them); the
        # finished checkpoint is the resume point of the demo
        path = unlearn(base, method, forget, retain, ckpt, progress=progress, overwrite=True, on_snapshot=snap,
                       **settings)
        prov = read_provenance(path)
        if frontier is not None and method == "task_vector":  # strengths: fractions of the calibrated scale
            a = prov.get("resolved", {}).get("tv_scale", settings.get("tv_scale", 1.0))
            for frac in lazy.budget.tv_fractions:
                name = f"{method}@{frac:g}a"
                subject = models.load_like(str(path), base) if frac == 1 else interpolated(base, path, frac, name)
                points.extend(frontier(name, subject, float(frac * a)))
        elif frontier is not None and prov["steps"] % every:  # the last snapshot: the checkpoint itself
            points.extend(frontier(f"{method}@{prov['steps']}", models.load_like(str(path), base),
                                   float(prov["steps"])))
        _write_points(points_file, points, frontier is not None)
        return path, points

    # a checkpoint trained without its trajectory (analyses/recovery_routes.py --train) has no points file: a
    # call that wants the points retrains it, one that needs only the checkpoint (the routes stage) reuses it
    return stage(f"unlearn {method}", out / "checkpoints" / f"{method}.stamp.json", stamp,
                 lambda: (ckpt / "unpact.json").exists() and (frontier is None or points_file.exists()),
                 lambda: (ckpt, _read_points(points_file)), train, on_change)


def _write_points(points_file: Path, points: list[dict], measured: bool) -> None:
    """The frontier points of a trajectory, or (not measured) no file: a stale one of an earlier run is removed."""
    if measured:
        atomic_write_json(points_file, points)
    else:
        points_file.unlink(missing_ok=True)


def _read_points(points_file: Path) -> list[dict]:
    return json.loads(points_file.read_text()) if points_file.exists() else []


def _given_stage(lazy: LazyBase, name: str, out: Path, points_file: Path, on_change: str,
                 frontier: Callable[[str, Any, float], list[dict]] | None) -> tuple[Path, list[dict]]:
    """A given (e.g. released) checkpoint: nothing is trained; its frontier is the one point it is."""
    spec = lazy.given[name]

    def measure() -> tuple[Path, list[dict]]:
        points: list[dict] = []
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if frontier is not None:
            points = frontier(f"{name}@given", models.load_like(spec, lazy.get()), 1.0)
        _write_points(points_file, points, frontier is not None)
        return Path(spec), points

    return stage(f"given checkpoint {name}", out / "checkpoints" / f"{name}.stamp.json",
                 checkpoint_stamp(lazy, name, [], [], None, 0.0), lambda: frontier is None or points_file.exists(),
                 lambda: (Path(spec), _read_points(points_file)), measure, on_change)


def given_fingerprint(spec: str) -> dict[str, Any]:
    """What identifies a given checkpoint without reading its weights: for a directory, every file's name, size
    and modification time; for a hub id, the id."""
    path = Path(spec)
    if not path.is_dir():
        return {"hub_id": spec}
    return {"dir": str(path.resolve()), "files": data_hash(sorted(
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in path.rglob("*") if f.is_file()))}


def checkpoint_stamp(lazy: LazyBase, method: str, forget: list, retain: list, steps: int | None,
                      target: float) -> dict[str, Any]:
    """What determines a method's checkpoint: model, method, its settings, the forget/retain data and the code;
    for a given checkpoint, the model and the checkpoint's fingerprint."""
    if method in lazy.given:
        return make_stamp(CODE, model=lazy.key, given=given_fingerprint(lazy.given[method]))
    return make_stamp(CODE, model=lazy.key, method=method, settings=method_settings(method, steps, target),
                      forget=data_hash([probe_key(p) for p in forget]),
                      retain=data_hash([probe_key(p) for p in retain]), frontier=asdict(lazy.budget.frontier))


def calibrate_lr(base: Subject, method: str, forget: Sequence[Any], retain: Sequence[Any], lr0: float,
                 target: float = 0.25, min_steps: int = CALIBRATION["min_steps"], max_k: int = CALIBRATION["max_k"],
                 keep: Path | None = None, **settings: Any) -> dict[str, Any]:
    """The demo's learning-rate rule: lr_k = lr0 * 2^(-k/2) for the smallest k >= 0 at which the method needs at
    least ``min_steps`` steps (forget accuracy checked after each) to reach ``target`` (not reaching it within
    the step budget counts as needing more). Each try trains a checkpoint with the demo's settings (thrown away,
    or the chosen one left at ``keep``); returns ``lr``, ``k``, ``steps`` (steps to target, None if not
    reached) and every try."""
    tries = []
    for k in range(max_k + 1):
        lr = float(f"{lr0 * 2 ** (-k / 2):.3g}")
        cfg = {**method_settings(method, None, target), **settings, "lr": lr}
        with tempfile.TemporaryDirectory() as tmp:
            prov = read_provenance(unlearn(base, method, list(forget), list(retain), keep or Path(tmp) / "c",
                                           progress=False, overwrite=keep is not None, **cfg))
        needed = prov["stopped_at"]
        tries.append({"k": k, "lr": lr, "steps_to_target": needed, "forget_acc": prov["forget_fact_acc_after"],
                      "final_losses": prov["final_losses"]})
        say(f"[calibrate] {method} k={k} lr={lr:g}: {needed if needed is not None else 'target not reached in'} "
            f"{'steps' if needed is not None else cfg['steps']}")
        if needed is None or needed >= min_steps:
            return {"method": method, "lr": lr, "k": k, "steps": needed, "tries": tries}
    raise UnlearningError(f"{method}: even lr0 * 2^(-{max_k}/2) reaches the target in fewer than {min_steps} steps")
