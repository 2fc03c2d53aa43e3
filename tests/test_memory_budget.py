"""The study's memory budget in model copies (issue 46), counted on a tiny study: the weights alive (distinct
parameter storages of every live transformers model made during the run, after ``gc``), in units of one copy of
the base model's weights, at the end of each stage and whenever a new model is wrapped.

* between stages: the base model only (1 copy): nothing a finished stage no longer needs stays alive;
* findings: the base and the unlearned model (2);
* routes: those two plus one working copy at a time (3): a quantised or relearned model is made, judged and
  freed before the next one."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest


@pytest.mark.slow
def test_each_stage_holds_only_the_model_copies_it_needs(tmp_path, monkeypatch):
    from conftest import demo_probes, make_tiny
    from transformers import PreTrainedModel

    import unpact_mech.model.subject as subject_mod
    import unpact_mech.runtime.pipeline as pipeline
    from unpact_mech.study.dilemma import run_demo

    gc.collect()
    before = weakref.WeakSet(o for o in gc.get_objects() if isinstance(o, PreTrainedModel))  # session fixtures
    one = [0]

    def copies() -> float:
        gc.collect()
        seen: dict[int, int] = {}
        for o in gc.get_objects():
            if isinstance(o, PreTrainedModel) and o not in before:
                for p in o.parameters():
                    seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        return sum(seen.values()) / one[0]

    log: list[tuple[str, str, float]] = []
    stack = ["-"]  # the stages computing now, innermost last (a cached stage computes nothing)
    real_measure, real_announce, real_wrap = pipeline.measure, pipeline.announce, subject_mod.wrap

    @contextlib.contextmanager
    def measure():
        with real_measure() as cost:
            yield cost
        log.append(("end", stack.pop(), copies()))

    def announce(msg: str) -> None:
        if msg.startswith("stage ") and ": computing" in msg:
            stack.append(msg.split(":")[0][len("stage "):])
        real_announce(msg)

    def wrap(hf, *a, **k):
        s = real_wrap(hf, *a, **k)
        if not one[0]:
            one[0] = sum(p.numel() * p.element_size() for p in hf.parameters())
        log.append(("new", stack[-1], copies()))
        return s

    monkeypatch.setattr(pipeline, "measure", measure)
    monkeypatch.setattr(pipeline, "announce", announce)
    import sys

    for mod in [m for m in sys.modules.values() if getattr(m, "__name__", "").startswith("unpact_mech")]:
        if getattr(mod, "wrap", None) is real_wrap:
            monkeypatch.setattr(mod, "wrap", wrap)
    model = make_tiny(tmp_path / "m", "llama")
    run_demo(str(model), ["ga_gdr"], tmp_path / "out", steps=2, target=0.0, probes=demo_probes(),
             known_only=False)

    ends = [(s, c) for kind, s, c in log if kind == "end"]
    assert {s.split()[0] for s, _ in ends} >= {"data", "unlearn", "findings", "routes"}, ends
    assert all(c == pytest.approx(1.0) for _, c in ends), ends  # only the base outlives a stage
    during = {}
    for _, s, c in log:
        during[s.split()[0]] = max(during.get(s.split()[0], 0.0), c)
    assert during["findings"] <= 2.0 + 1e-9, log
    assert during["routes"] <= 3.0 + 1e-9, log  # base, unlearned and one working copy
    made = [s for kind, s, _ in log if kind == "new" and s.startswith("routes")]
    assert len(made) >= 6, log  # quantised and relearned copies were made: the bound was tested, not vacuous
