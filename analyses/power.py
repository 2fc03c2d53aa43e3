"""Can the study tell a null from a miss? The power of the KeyToken-specific test and of the destruction test.

For each n of eligible probes and each planted effect (KeyTokens recover ``effect`` more often than the random
control's rate), ``--reps`` seeded replicate studies are simulated and scored by the study's own rule (the 95%
paired bootstrap interval of KeyTokens minus random lies above 0); the power is the share that find the effect.
The model and its exactness are in ``unpact_mech/findings/power.py``; ``tests/test_power.py`` checks it against binomial
calculations. Writes ``power_curve.csv``, ``mde.csv`` and ``power_curve.png``.

    python analyses/power.py --out unpact_out/power [--ns 6,12,24,48,100] [--p-random 0.05] [--reps 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from unpact_mech.core.io import write_table
from unpact_mech.core.options import int_list, positive_int, unit_float
from unpact_mech.findings.power import destruction_mde, power_curve, specific_mde
from unpact_mech.report.figures import power_curves, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="unpact_out/power")
    ap.add_argument("--ns", type=int_list(1, 100_000), default=[6, 12, 24, 48, 100],
                    help="numbers of eligible probes (the demo has 6-11; every known built-in fact gives about 60-80)")
    ap.add_argument("--p-random", type=unit_float(hi_open=True), default=0.05,
                    help="the random control's recovery rate (the demo observes about 0.05)")
    ap.add_argument("--draws", type=positive_int(100), default=2, help="random-token draws per probe (demo: 2)")
    ap.add_argument("--reps", type=positive_int(100_000), default=400, help="simulated studies per point")
    a = ap.parse_args()
    out = Path(a.out)
    effects = [round(e, 2) for e in np.arange(0.05, 1 - a.p_random + 1e-9, 0.05)]
    curve = power_curve(a.ns, effects, a.p_random, a.draws, a.reps)
    write_table(curve, out / "power_curve.csv")
    mde = pd.DataFrame([{"n": n, "mde_specific": specific_mde(n, a.p_random, a.draws, reps=a.reps),
                         "mde_destruction": destruction_mde(n)} for n in a.ns])
    write_table(mde, out / "mde.csv")
    fig = power_curves(curve)
    save_figure(fig, out / "power_curve.png")
    print(mde.round(3).to_string(index=False))
    print(f"wrote {out / 'power_curve.csv'}, {out / 'mde.csv'}, {out / 'power_curve.png'}")


if __name__ == "__main__":
    main()
