"""One Registry type serves every registry: the same duplicate error, an unknown-name error listing the known
names, ``names()``, and the root-level ``list_*`` functions read them."""

import pytest

import unpact_mech as um
from unpact_mech.core.errors import UnknownNameError, UnpactError
from unpact_mech.core.registry import DuplicateNameError, Registry


def test_register_lookup_and_names():
    r: Registry[int] = Registry("widget")
    assert r.register("b", 2) == 2 and r.register("a", 1) == 1
    assert r["a"] == 1 and "a" in r and "c" not in r and 3 not in r
    assert r.names() == ["a", "b"] and list(r) == ["b", "a"] and len(r) == 2  # iteration keeps registration order
    assert dict(r.items()) == {"b": 2, "a": 1} and r.get("c") is None


def test_duplicate_and_unknown_names_are_refused_clearly():
    r: Registry[int] = Registry("widget")
    r.register("a", 1)
    with pytest.raises(DuplicateNameError, match=r"widget 'a' is registered twice: choose another name \(registered widgets: a\)"):
        r.register("a", 2)
    assert r["a"] == 1  # the first registration is kept
    with pytest.raises(UnknownNameError, match=r"unknown widget 'z'; registered widgets: a$"):
        r["z"]
    with pytest.raises(UnpactError, match="non-empty name"):
        r.register("", 3)
    with pytest.raises(UnknownNameError):
        r[["a"]]  # an unhashable key is an unknown name, not a TypeError
    assert r.unregister("a") == 1 and "a" not in r
    with pytest.raises(UnknownNameError, match=r"\(none\)"):
        r["a"]


def test_decorator_registers_the_wrapped_thing_and_returns_the_function():
    r: Registry[tuple] = Registry("thing")

    @r.decorator("f", lambda fn: ("wrapped", fn))
    def f():
        return 1

    assert f() == 1 and r["f"] == ("wrapped", f)
    with pytest.raises(DuplicateNameError):
        r.decorator("f")(lambda: 2)


@pytest.mark.parametrize("module, name, kind", [
    ("unpact_mech.evals.loaders", "BENCHMARKS", "benchmark"),
    ("unpact_mech.evals.tasks", "TASKS", "task"),
    ("unpact_mech.evals.criteria", "CRITERIA", "correctness criterion"),
    ("unpact_mech.unlearning", "METHODS", "unlearning method"),
    ("unpact_mech.attribution", "ATTRIBUTION_METHODS", "attribution method"),
    ("unpact_mech.routes", "RECOVERY_ROUTES", "recovery route"),
    ("unpact_mech.evals.ou_metrics", "OU_METRICS", "metric"),
    ("unpact_mech.model.loading", "BUILTIN_MODELS", "built-in model"),
    ("unpact_mech.cli.commands", "COMMANDS", "command"),
])
def test_every_registry_is_one_registry_type(module, name, kind):
    import importlib

    reg = getattr(importlib.import_module(module), name)
    assert isinstance(reg, Registry) and reg.kind == kind and len(reg) > 0
    first = next(iter(reg))
    with pytest.raises(DuplicateNameError, match="registered twice"):
        reg.register(first, reg[first])
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'no-such'; registered {kind}s: {first}|, {first}"):
        reg["no-such"]


def test_list_functions_at_the_root_read_the_registries():
    from unpact_mech.evals.loaders import BENCHMARKS
    from unpact_mech.unlearning import METHODS

    assert um.list_methods() == sorted(METHODS) and "npo_gdr" in um.list_methods()
    assert um.list_benchmarks() == sorted(BENCHMARKS) and "facts" in um.list_benchmarks()
    assert "smollm2-135m" in um.list_models() and "wmdp" in um.list_tasks()
    assert {"teacher_forced", "generation"} <= set(um.list_criteria())
    assert "loo" in um.list_attribution_methods() and "quantize" in um.list_routes()
    assert "truth_ratio" in um.list_metrics()
