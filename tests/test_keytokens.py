import math

import pytest

from unpact_mech.probes.keytokens import KeyTokenParams, focus_share, select_keytokens


def test_eq3_few_positives_are_all_keytokens():
    # 3 positive tokens < beta=5: all positives, largest first, whatever their size
    assert select_keytokens([0.5, -1.0, 0.01, 0.0, 2.0]) == [4, 0, 2]


def test_eq4_many_positives_thresholded_by_alpha():
    scores = [4.0, 3.0, 0.5, 0.5, 0.5, 0.5, -2.0]  # 6 positives >= beta; mass 9
    # normalised: .444 .333 .056 .056 .056 .056 -> alpha .1 keeps the first two
    assert select_keytokens(scores, KeyTokenParams(alpha=0.1, beta=5)) == [0, 1]
    assert select_keytokens(scores, KeyTokenParams(alpha=0.4, beta=5)) == [0]
    # beta above the count of positives switches back to eq.3
    assert select_keytokens(scores, KeyTokenParams(alpha=0.4, beta=7)) == [0, 1, 2, 3, 4, 5]


def test_eq4_nothing_above_alpha_and_caps():
    flat = [1.0] * 20  # each 0.05 < alpha
    assert select_keytokens(flat, KeyTokenParams(min_keytokens=0)) == []
    assert select_keytokens(flat) == [0]
    assert select_keytokens([3, 2, 1], KeyTokenParams(max_keytokens=2)) == [0, 1]
    assert select_keytokens([-1.0, 0.0]) == []


def test_bad_params_and_focus():
    with pytest.raises(ValueError, match="alpha"):
        KeyTokenParams(alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        KeyTokenParams(beta=0)
    assert focus_share([2.0, 1.0, -3.0, 1.0], [0]) == pytest.approx(0.5)
    assert math.isnan(focus_share([-1.0, 0.0], [0]))
