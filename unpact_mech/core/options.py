"""One declaration per option type, shared by every command, checked when the arguments are parsed.

Each type is an argparse ``type=`` built on the library's own checks (``unpact_mech.core.errors.check_*``), so a bad
value is refused by argparse (one line, exit 2) before any model or data loads, and the library refuses the same
value with an ``UnpactError`` when it is called from Python.

Options that only some routes or modes use are marked with :func:`route`: given where nothing would use them,
they are refused, naming what would (``recover --bits 4 --routes emphasis``); not given, they take their default.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from unpact_mech.core.errors import (
    MAX_FACTOR,
    UnpactError,
    check_choices,
    check_finite_factor,
    check_float,
    check_int,
    check_unique,
)

MAX_RELEARN_STEPS = 1000  # relearning evaluates the model after each listed step: beyond this, hours on a CPU
MAX_STEPS = 100_000  # unlearning steps


def _typed(name: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(text)
        except UnpactError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return parse


def dataclass_from(cls: Any, d: Any, what: str, nested: Mapping[str, Any] | None = None) -> Any:
    """An options dataclass from a mapping, as a config file holds it: lists become tuples, the ``nested`` fields
    (name -> dataclass) are built the same way, an unknown key is refused naming the known ones, and a bad value
    with the dataclass's own message; an instance of ``cls`` is returned as it is."""
    if isinstance(d, cls):
        return d
    known = [f.name for f in fields(cls)]
    if not isinstance(d, Mapping):
        raise UnpactError(f"{what} must be a mapping of {', '.join(known)}, got {d!r}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UnpactError(f"{what}: unknown option(s) {', '.join(map(repr, unknown))}; options are {', '.join(known)}")
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    for name, sub in (nested or {}).items():
        if name in out:
            out[name] = dataclass_from(sub, out[name], f"{what}.{name}")
    try:
        return cls(**out)
    except TypeError as e:
        raise UnpactError(f"{what}: {e}") from None


def positive_int(hi: int | None = None) -> Callable[[str], int]:
    """A whole number >= 1 (and <= ``hi``)."""
    return _typed("positive int", lambda t: check_int(t, "", 1, hi))


def nonneg_int() -> Callable[[str], int]:
    return _typed("int >= 0", lambda t: check_int(t, "", 0))


def _items(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise UnpactError(f"must list at least one value (comma-separated), got {text!r}")
    if not all(items):
        raise UnpactError(f"has an empty item in {text!r}; separate values by single commas")
    return items


def int_list(lo: int, hi: int) -> Callable[[str], list[int]]:
    """Comma-separated whole numbers in ``lo..hi``, each once."""
    return _typed("int list", lambda t: check_unique([check_int(x, "each value", lo, hi) for x in _items(t)]))


def factor_list() -> Callable[[str], list[float]]:
    """Comma-separated emphasis factors, each finite in (0, MAX_FACTOR], each once, at least one other than 1."""
    def check(text: str) -> list[float]:
        fs = check_unique([check_finite_factor(x, "each factor") for x in _items(text)])
        if all(f == 1.0 for f in fs):
            raise UnpactError(f"must hold a factor other than 1 (1 is no emphasis, and is always scored as the "
                              f"baseline); factors are in (0, {MAX_FACTOR:g}], got {text!r}")
        return fs

    return _typed("factor list", check)


def positive_float() -> Callable[[str], float]:
    """A finite number > 0 (learning rates)."""
    return _typed("positive float", lambda t: check_float(t, "", 0.0))


def unit_float(hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in [0, 1] (or [0, 1))."""
    return _typed("number in [0, 1]", lambda t: check_float(t, "", 0.0, 1.0, lo_open=False, hi_open=hi_open))


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """Comma-separated names, each one of ``choices``, each once."""
    return _typed("name list", lambda t: check_choices(_items(t), list(choices)))


def check_device(device: str) -> str:
    """``device`` if torch can place tensors there and it exists on this machine, else one error saying what the
    machine has (``meta`` tensors hold no numbers, so nothing could be scored on them)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UnpactError(f"unknown device {device!r} ({err}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "meta":
        raise UnpactError("device 'meta' holds tensor shapes but no numbers, so nothing can be scored on it; use "
                          "cpu or cuda")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UnpactError(f"device {device!r}: CUDA is not available here (torch.cuda.is_available() is False; "
                              f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use "
                              "--device cpu, or a machine with a GPU")
        if dev.index is not None and dev.index >= count:
            raise UnpactError(f"device {device!r}: this machine has {count} CUDA device(s), "
                              f"{', '.join(f'cuda:{i}' for i in range(count))}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UnpactError(f"device {device!r}: MPS is not available here (torch.backends.mps.is_available() is "
                          "False); use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UnpactError(f"device {device!r}: unpact runs on cpu, cuda or mps, not {dev.type}")
    return device


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n (None for no shard)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UnpactError(f"--shard takes 'i/n' (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UnpactError(f"--shard {text}: need 0 <= i < n")
    return i, n


def device() -> Callable[[str], str]:
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    return _typed("device", check_device)


def shard() -> Callable[[str], tuple[int, int] | None]:
    return _typed("shard", parse_shard)


@dataclass(frozen=True)
class Routed:
    """An option only some routes or modes use: ``used(args)`` says whether this run would use it."""

    dest: str
    flag: str
    default: Any
    used: Callable[[argparse.Namespace], bool]
    user: str  # what uses it, and how to ask for that


ROUTED: dict[str, dict[str, Routed]] = {}  # command -> flag -> its routed option


def route(p: argparse.ArgumentParser, command: str, flag: str, used: Callable[[argparse.Namespace], bool],
          user: str) -> None:
    """Mark an option of ``p`` as used only where ``used(args)``: :func:`resolve_routed` then fills its default
    when it is not given, and refuses it when it is given to a run that would ignore it."""
    action = next(a for a in p._actions if flag in a.option_strings)
    default = action.default
    if isinstance(default, str) and callable(action.type):
        default = action.type(default)
    action.default = None
    action.help = f"{action.help or ''} [used by {user}]".strip()
    ROUTED.setdefault(command, {})[flag] = Routed(action.dest, flag, default, used, user)


def resolve_routed(args: argparse.Namespace) -> None:
    """Fill each routed option's default, or refuse it where this run would not use it."""
    for r in ROUTED.get(args.cmd, {}).values():
        if getattr(args, r.dest) is None:
            setattr(args, r.dest, r.default)
        elif not r.used(args):
            raise UnpactError(f"{r.flag} is used only by {r.user}, so this run would ignore it; drop {r.flag}, or "
                              "ask for what uses it")


def per_split(text: str) -> int | None:
    """``all`` (every known probe of the pool) or a positive number of probes per split."""
    return None if text == "all" else positive_int()(text)


def parse_executor(text: str) -> tuple[str, str | None]:
    """``local`` | ``ray`` (a local Ray cluster) | ``ray=ADDRESS`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)
    -> (kind, address)."""
    kind, eq, address = text.partition("=")
    if kind not in ("local", "ray") or (eq and kind != "ray") or (eq and not address):
        raise UnpactError(f"--executor takes local, ray or ray=ADDRESS (e.g. ray=10.0.0.5:6379), got {text!r}")
    if address and address != "auto":
        host, colon, port = address.removeprefix("ray://").rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UnpactError(f"--executor ray={address}: the address is HOST:PORT (e.g. 10.0.0.5:6379), "
                              "ray://HOST:PORT or auto")
    return kind, address or None


def executor() -> Callable[[str], tuple[str, str | None]]:
    return _typed("executor", parse_executor)


def parse_device_map(text: str) -> Any:
    """``auto`` | ``balanced`` | ``balanced_low_0`` | ``sequential`` | a device (``cpu``, ``cuda:1``) | a JSON object
    of module name -> device (accelerate's ``device_map``)."""
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except ValueError as err:
            raise UnpactError(f"--device-map: not a JSON object ({err})") from None
        if not isinstance(mapping, dict) or not mapping:
            raise UnpactError("--device-map: the JSON object maps module names to devices, e.g. '{\"\": \"cpu\"}'")
        for dev in mapping.values():
            if dev != "disk":
                check_device(str(dev) if not isinstance(dev, int) else f"cuda:{dev}")
        return mapping
    check_device(text)
    return {"": text}


def device_map() -> Callable[[str], Any]:
    return _typed("device map", parse_device_map)


def parse_max_memory(text: str) -> dict[int | str, str]:
    """``0=20GiB,1=20GiB,cpu=60GiB`` -> accelerate's ``max_memory`` ({0: "20GiB", ..., "cpu": "60GiB"})."""
    out: dict[int | str, str] = {}
    for part in text.split(","):
        dev, eq, size = part.strip().partition("=")
        if not eq or not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", size.strip()):
            raise UnpactError(f"--max-memory takes DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB; got {part!r}")
        key: int | str = int(dev) if dev.isdigit() else dev
        if isinstance(key, str) and key not in ("cpu", "disk", "mps"):
            raise UnpactError(f"--max-memory: device {dev!r} is a GPU index, cpu, mps or disk")
        out[key] = size.strip()
    return out


def max_memory() -> Callable[[str], dict[int | str, str]]:
    return _typed("max memory", parse_max_memory)
