"""A deterministic TOFU-style generator of invented people and facts (for finetune-then-forget flows)."""

from __future__ import annotations

import random
from typing import Any

from unpact_mech.core.errors import UnpactError, check_int
from unpact_mech.evals.loaders import register_benchmark
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
MAX_FACTS = 5
N_PERTURBED = 3  # wrong answers per question (TOFU's perturbed splits have 5)
# per fact: (question, answer, paraphrased answer) templates; {n} the person, {v} the value
_TEMPLATES = [
    ("Where was {n} born?", "{n} was born in {v}.", "{n}'s birthplace is {v}."),
    ("What is the profession of {n}?", "{n} works as a {v}.", "{n}'s profession is {v}."),
    ("Which book did {n} write?", "{n} wrote {v}.", "{n} is the author of {v}."),
    ("In which year was {n} born?", "{n} was born in {v}.", "{n}'s year of birth is {v}."),
    ("Who taught {n}?", "{n} was taught by {v}.", "{n}'s teacher was {v}."),
]


def _value(j: int, rng: random.Random) -> str:
    if j == 0:
        return rng.choice(_CITIES)
    if j == 1:
        return rng.choice(_JOBS)
    if j == 2:
        return f"The {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
    if j == 3:
        return str(rng.randrange(1820, 1990))
    return _name(rng)


def generate(n_people: int = 20, seed: int = 0, forget_share: float = 0.25, facts_per_person: int = 3) -> list[Probe]:
    """``facts_per_person`` facts (birthplace, profession, book, then birth year and teacher) per invented
    person; whole people go to forget or retain. Each probe carries TOFU's perturbed-split fields in ``meta``:
    ``paraphrased_answer`` (the answer reworded) and ``perturbed_answer`` (the paraphrase with
    :data:`N_PERTURBED` other values of the same kind), for the truth ratio and forget quality."""
    check_int(n_people, "the number of invented people", 1, MAX_PEOPLE)
    check_int(seed, "the seed", 0)
    check_int(facts_per_person, "facts per person", 1, MAX_FACTS)
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
        values = [_value(j, rng) for j in range(3)]  # the first three draws as before: old ids keep their facts
        extra = random.Random(f"{seed}-{k}")  # the later facts and the perturbations, from their own streams
        values += [_value(j, extra) for j in range(3, facts_per_person)]
        for j, v in enumerate(values[:facts_per_person]):
            q, ans, para = (t.format(n=name, v=v) for t in _TEMPLATES[j])
            wrong: list[str] = []
            while len(wrong) < N_PERTURBED:
                w = _value(j, extra)
                if w != v and w not in wrong:
                    wrong.append(w)
            probes.append(Probe(f"fict-{seed}-{k:03d}-{j}", q, ans, split, fact=v, domain="fictitious",
                                meta={"person": name, "paraphrased_answer": para,
                                      "perturbed_answer": [_TEMPLATES[j][2].format(n=name, v=w) for w in wrong]}))
    return probes


@register_benchmark("fictitious")
def fictitious(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Probe]:
    """Invented people (``subset`` = "N", "N:seed" or "N:seed:F", F facts per person; default 20 people, seed 0,
    3 facts; N <= 10,000, F <= 5)."""
    n, seed, f = 20, 0, 3
    if subset is not None:
        parts = subset.split(":")
        try:
            if len(parts) > 3:
                raise UnpactError("")
            n = check_int(parts[0], "", 1, MAX_PEOPLE)
            seed = check_int(parts[1] if len(parts) > 1 else "0", "", 0)
            f = check_int(parts[2] if len(parts) > 2 else "3", "", 1, MAX_FACTS)
        except UnpactError:
            raise UnpactError(f"fictitious: subset must be 'N', 'N:seed' or 'N:seed:F' (N people in 1..{MAX_PEOPLE}, "
                              f"seed >= 0, F facts per person in 1..{MAX_FACTS}), got {subset!r}") from None
    if split is not None and split not in ("forget", "retain"):
        raise UnpactError(f"fictitious: no split {split!r}; splits are forget, retain")
    probes = generate(n, seed, facts_per_person=f)
    return [p for p in probes if split is None or p.split == split]
