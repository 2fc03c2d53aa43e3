"""Planted effects with known answers on the real SmolLM2: a suppression of attention to the KeyTokens hides facts
the model knows, and the recovery analysis brings them back (exactly, at the factor that undoes it) while it
brings back nothing the model never knew."""

from __future__ import annotations

import pytest

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError
from unpact_mech.evals.loaders import filter_known
from unpact_mech.findings.planted import planted_recovery, planted_summary, suppressed
from unpact_mech.hooks import applied
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import probe_table
from unpact_mech.study.settings import budget_order


@pytest.fixture(scope="module")
def planted_setup(smol, smol_probes):
    from unpact_mech.model.loading import load_model

    pool = budget_order(smol_probes)[:60]
    known = {p.id for p in filter_known(smol, pool)[0]}
    rec = [p for p in pool if p.id in known][:8]
    erased = [p for p in pool if p.id not in known][:4]
    return Analysis(smol, rec + erased), load_model("smollm2-135m"), rec, erased


@pytest.mark.slow
def test_suppression_hides_facts_the_model_knows(planted_setup):
    an, planted, rec, _ = planted_setup
    tps = tokenize_probes(planted, rec)
    plain = probe_table(planted, tps).set_index("probe_id").fact_top1
    assert plain.all()  # without the hook the second Subject answers every one, as the base does
    hidden = []
    for p, tp in zip(rec, tps):
        with applied(planted, suppressed(an, planted, p, 0.01)):
            hidden.append(not bool(probe_table(planted, [tp]).fact_top1.iloc[0]))
    assert sum(hidden) >= 2, hidden
    assert probe_table(planted, tps).fact_top1.all()  # the hook is gone after the block


@pytest.mark.slow
def test_recovery_analysis_finds_the_planted_suppression_and_not_the_erasure(planted_setup):
    """At strength 1/8, emphasis x8 on the same KeyTokens adds log 8 back: the subject is the base again on that
    probe, so every hidden fact is recovered (K = 1), while random tokens emphasised x8 leave it hidden, and facts
    the model never knew stay unrecovered."""
    an, planted, rec, erased = planted_setup
    per = planted_recovery(an, planted, rec, erased, strength=1 / 8, factors=(8.0,))
    sup = per[(per.kind == "suppressed") & per.keytokens.notna()]
    assert len(sup) >= 1 and (sup.keytokens == 1).all() and sup.base_correct.all() and not sup.planted_correct.any()
    assert sup.random.mean() < 1
    era = per[per.kind == "erased"]
    assert len(era) == len(erased) and (era.keytokens == 0).all() and not era.base_correct.any()
    s = planted_summary(per).set_index("kind")
    assert s.loc["suppressed", "keytokens"] == 1 and s.loc["suppressed", "specific"] > 0
    assert s.loc["erased", "keytokens"] == 0 and s.loc["erased", "specific"] <= 0
    with pytest.raises(UnpactError, match="second Subject"):
        planted_recovery(an, an.base, rec[:1])
