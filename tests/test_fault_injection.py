"""SIGKILL at random moments while a checkpoint or a merged table is being written: the output path holds the old
complete output, the new complete output, or nothing; never a half-written file that loads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CKPT_LOOP = r"""
import itertools, sys
from unpact_mech.model.loading import load_hf, _load_tokenizer, save_checkpoint
src, out, flag = sys.argv[1:4]
hf, tok = load_hf(src), _load_tokenizer(src)
for i in itertools.count():
    save_checkpoint(hf, tok, out, {"method": "loop", "i": i}, overwrite=True)
    if i == 0:
        open(flag, "w").close()
"""

MERGE_LOOP = r"""
import itertools, sys
from unpact_mech.runtime.sharding import merge_parts
out, flag, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
for i in itertools.count():
    merge_parts(parts, out)
    if i == 0:
        open(flag, "w").close()
"""


def _kill_at_random(script: str, args: list[str], flag: Path, check, kills: int = 6, seed: int = 0) -> None:
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in range(kills):
        flag.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env, stderr=subprocess.PIPE)
        t0 = time.time()
        while not flag.exists():
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            if time.time() - t0 > 120:
                proc.kill()
                raise AssertionError("the writer never finished a first write")
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check(k)


@pytest.mark.slow  # subprocesses killed and rerun
def test_sigkill_during_checkpoint_writes(tiny_llama_dir, tmp_path):
    from unpact_mech.model.loading import load_model, read_provenance

    out = tmp_path / "ckpt"
    seen = []

    def check(k):
        if out.exists():  # complete: provenance, config and weights all readable
            prov = read_provenance(out)
            seen.append(prov["i"])
            assert (out / "config.json").exists() and json.loads((out / "config.json").read_text())
            assert load_model(str(out)).n_layers == 3
        else:  # only between the two renames: then the previous checkpoint is complete in the directory that
            # save_checkpoint made itself to move it aside (never a user's ckpt.old)
            olds = [d for d in out.parent.glob("ckpt.unpact-old-*") if (d / "unpact.json").exists()]
            assert olds and all("i" in read_provenance(d) for d in olds)
            assert not out.with_name("ckpt.old").exists()

    _kill_at_random(CKPT_LOOP, [str(tiny_llama_dir), str(out), str(tmp_path / "flag")], tmp_path / "flag", check)
    assert seen, "no kill left a checkpoint at all"


@pytest.mark.slow  # subprocesses killed and rerun
def test_sigkill_during_merge(tmp_path):
    from unpact_mech.core.io import read_table
    from unpact_mech.runtime.sharding import canonical, write_part

    n = 120_000
    full = pd.DataFrame({"probe_id": [f"p{i % 997}" for i in range(n)], "model": "m", "method": "loo",
                         "position": range(n), "token": "x", "layer": pd.NA, "head": pd.NA, "component": pd.NA,
                         "score": [i * 1e-3 for i in range(n)]})
    parts = []
    for i in range(2):
        p = tmp_path / f"part{i}.csv"
        write_part(full.iloc[i::2], p, "run-key", (i, 2))
        parts.append(str(p))
    expected = canonical(full)
    out = tmp_path / "merged.csv"

    def check(k):
        if out.exists():
            got = read_table(out)
            assert len(got) == len(expected)
            assert got.score.sum() == pytest.approx(expected.score.sum())
        assert not (tmp_path / "merged.csv.shard.json").exists()

    _kill_at_random(MERGE_LOOP, [str(out), str(tmp_path / "flag"), *parts], tmp_path / "flag", check, kills=5)
