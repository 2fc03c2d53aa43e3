"""A deterministic TOFU-style generator of invented people and facts (for finetune-then-forget flows)."""

from __future__ import annotations

import random
from typing import Any

from unpact_mech.data import register_benchmark
from unpact_mech.errors import UnpactError, check_int
from unpact_mech.probes import Probe

_SYL = ["ka", "lo", "mi", "ren", "tas", "vo", "zel", "dri", "nu", "pha", "sor", "bel", "qui", "mar", "tev", "osh"]
_CITIES = ["Velmora", "Quintessa", "Drovak", "Lunthal", "Saresh", "Pemberlow", "Orvane", "Tiskaru", "Hallowmere",
           "Zenthar", "Corvell", "Ishtavi"]
_JOBS = ["cartographer", "glassblower", "astronomer", "violin maker", "botanist", "lighthouse keeper", "archivist",
         "beekeeper", "clockmaker", "mapmaker", "potter", "translator"]
_WORDS = ["Silent", "Amber", "Hollow", "Iron", "Velvet", "Distant", "Crimson", "Winter", "Paper", "Glass"]
_NOUNS = ["Harbor", "Orchard", "Lantern", "Meridian", "Garden", "Compass", "Tide", "Archive", "Bridge", "Sparrow"]


def _name(rng: random.Random) -> str:
    first = "".join(rng.choice(_SYL) for _ in range(2)).capitalize()
    last = "".join(rng.choice(_SYL) for _ in range(3)).capitalize()
    return f"{first} {last}"


MAX_PEOPLE = 10_000  # TOFU has 200; the name space holds about a million, drawn without repeats


def generate(n_people: int = 20, seed: int = 0, forget_share: float = 0.25) -> list[Probe]:
    """Three facts (birthplace, profession, book) per invented person; whole people go to forget or retain."""
    check_int(n_people, "the number of invented people", 1, MAX_PEOPLE)
    check_int(seed, "the seed", 0)
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_people:
        n = _name(rng)
        if n not in seen:
            seen.add(n)
            names.append(n)
    n_forget = max(1, round(n_people * forget_share))
    probes = []
    for k, name in enumerate(names):
        split = "forget" if k < n_forget else "retain"
        city, job = rng.choice(_CITIES), rng.choice(_JOBS)
        book = f"The {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        facts = [
            (f"Where was {name} born?", f"{name} was born in {city}.", city),
            (f"What is the profession of {name}?", f"{name} works as a {job}.", job),
            (f"Which book did {name} write?", f"{name} wrote {book}.", book),
        ]
        for j, (q, a, f) in enumerate(facts):
            probes.append(Probe(f"fict-{seed}-{k:03d}-{j}", q, a, split, fact=f, domain="fictitious",
                                meta={"person": name}))
    return probes


@register_benchmark("fictitious")
def fictitious(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Probe]:
    """Invented people (``subset`` = "N" people or "N:seed"; default 20 people, seed 0; N <= 10,000)."""
    n, seed = 20, 0
    if subset is not None:
        a, _, b = subset.partition(":")
        try:
            n = check_int(a, "", 1, MAX_PEOPLE)
            seed = check_int(b or "0", "", 0)
        except UnpactError:
            raise UnpactError(f"fictitious: subset must be 'N' or 'N:seed' (N people in 1..{MAX_PEOPLE}, seed >= 0), "
                              f"got {subset!r}") from None
    if split is not None and split not in ("forget", "retain"):
        raise UnpactError(f"fictitious: no split {split!r}; splits are forget, retain")
    probes = generate(n, seed)
    return [p for p in probes if split is None or p.split == split]
