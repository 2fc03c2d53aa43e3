"""Ray's overhead on one machine: leave-one-out of N built-in probes on SmolLM2, all three runs in this process's
session, each as the user runs it (``unpact attribute``, a child process).

  * single process, 2 torch threads (the baseline);
  * ``--executor ray --actors 1 --threads-per-actor 2`` (a local cluster, started and stopped by the command);
  * ``--executor ray --actors 2 --threads-per-actor 1``.

Reports wall time (cluster start and model loads included: what a user waits for), rows and probes per second,
the command's peak RSS (``wait4``) and each actor's peak RSS (from the parts' done markers), and checks that the
Ray tables equal the single-process one.

    python benchmarks/bench_scale.py [--n 200] [--out benchmarks/results/bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"wall_s": wall, "command_max_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    import pandas as pd

    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.probes import save_probes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    a = ap.parse_args()
    unpact = str(Path(sys.executable).with_name("unpact"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    pool = load_benchmark("facts")
    if len(pool) < a.n:
        raise SystemExit(f"the built-in pool has {len(pool)} probes; use --n <= {len(pool)}")
    probes = save_probes(pool[: a.n], tmp / "probes.jsonl")
    base = [unpact, "attribute", "--probes", str(probes)]
    configs = [("single process, 2 threads", [], 2), ("ray, 1 actor x 2 threads",
               ["--executor", "ray", "--actors", "1", "--threads-per-actor", "2"], 2),
               ("ray, 2 actors x 1 thread", ["--executor", "ray", "--actors", "2", "--threads-per-actor", "1"], 1)]
    results, tables = [], []
    for k, (name, extra, threads) in enumerate(configs):
        out = tmp / f"run{k}.csv"
        r = {"config": name, **run([*base, "--out", str(out), *extra], threads)}
        table = pd.read_csv(out)
        tables.append(table)
        r["rows"], r["rows_per_s"], r["probes_per_s"] = len(table), len(table) / r["wall_s"], a.n / r["wall_s"]
        marks = [json.loads(f.read_text()) for f in Path(f"{out}.ray", "done").glob("*.json")] if extra else []
        if marks:
            per_actor: dict[int, float] = {}
            for m in marks:
                per_actor[m["actor_pid"]] = max(per_actor.get(m["actor_pid"], 0.0), m["actor_max_rss_mb"])
            r["actor_max_rss_mb"] = sorted(round(v) for v in per_actor.values())
            r["probe_seconds_sum"] = sum(m["seconds"] for m in marks)
        if k:
            r["overhead_vs_single"] = r["wall_s"] / results[0]["wall_s"] - 1
            r["max_abs_score_diff"] = float((table.score - tables[0].score).abs().max())
            assert list(table.probe_id) == list(tables[0].probe_id), "row order differs from the single process"
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nleave-one-out of {a.n} SmolLM2 probes ({len(tables[0])} rows), same machine, same session:")
    print(pd.DataFrame(results).round(3).to_string(index=False))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"n": a.n, "cpus": os.cpu_count(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
