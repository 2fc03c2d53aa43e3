"""Gradient token attributions vs leave-one-out on a long passage (MUSE-style: a few hundred tokens), SmolLM2.

The passage is ours (fictional, written for this benchmark). Leave-one-out runs one forward per passage token
(batched, prefix cached); gradient x input one forward and backward; integrated gradients ``--steps`` of them.
Prints each time, the ratios (same process), peak memory, and the rank correlation with leave-one-out.

    python benchmarks/bench_gradient.py [--steps 64]
"""

from __future__ import annotations

import argparse
import resource
import time

PASSAGE = (
    "The harbour town of Velmora sits at the mouth of the river Ostra, where the grey cliffs of the northern coast "
    "give way to a wide bay of shallow water. For three centuries the town lived from salt: every summer the tide "
    "pans along the eastern shore were flooded, sealed and left to dry, and the white crust was raked by hand into "
    "wooden carts. The salt guild kept its records in a tall stone house beside the fish market, and its ledgers "
    "still list the names of the families who worked each pan. In the winter of the great storm the sea broke "
    "through the dykes and ruined most of the pans, and many families left for the inland city of Tarn. Those who "
    "stayed turned to boat building. The shipwright Ilse Marren designed a narrow, flat-bottomed boat that could "
    "cross the shallow bay at low tide, and within a generation the yards of Velmora were building them for "
    "fishermen along the whole coast. Marren's own workshop stood at the end of Rope Street, next to the old "
    "lighthouse, and her first boat, the Gull, is kept today in the town museum. The museum also holds a painted "
    "map of the bay, made by the guild's last clerk, which shows every salt pan, every channel and the line of the "
    "old dykes before the storm. Visitors who walk from the museum to the lighthouse pass the stone house of the "
    "guild, now a library, and the market where the fishermen still sell their catch each morning. The town "
    "celebrates the boat builders every spring with a race across the bay, and the winner rings the lighthouse "
    "bell."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.attribution import attribute
    from unpact_mech.probes import Probe

    s = load_model("smollm2-135m")
    probe = Probe("velmora", PASSAGE + "\n\nWho designed the flat-bottomed boat?",
                  "The flat-bottomed boat was designed by Ilse Marren.", fact="Ilse Marren")
    tp = tokenize_probes(s, [probe], "plain")[0]
    print(f"passage: {len(tp.attributable)} attributable tokens, {len(tp.ids)} in all", flush=True)
    attribute(s, [tp], "grad_x_input")  # warm-up
    times, tables = {}, {}
    for m, kw in (("grad_x_input", {}), ("integrated_gradients", {"steps": a.steps}), ("loo", {})):
        t = time.perf_counter()
        tables[m] = attribute(s, [tp], m, **kw).set_index("position").score
        times[m] = time.perf_counter() - t
        print(f"{m}: {times[m]:.1f} s; peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB",
              flush=True)
    for m in ("grad_x_input", "integrated_gradients"):
        rho = tables["loo"].corr(tables[m].loc[tables["loo"].index], method="spearman")
        print(f"{m}: leave-one-out / {m} time = {times['loo'] / times[m]:.1f}x; Spearman with LOO {rho:.3f}")


if __name__ == "__main__":
    main()
