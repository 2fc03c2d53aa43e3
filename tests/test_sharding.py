import json

import pandas as pd
import pytest

from unpact_mech.cli import main
from unpact_mech.core.errors import UnpactError
from unpact_mech.runtime.sharding import ShardError, canonical, merge_parts, parse_shard, take_shard


@pytest.fixture()
def probe_file(tmp_path, tiny_probes):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in tiny_probes))
    return f


@pytest.mark.parametrize("cmd", ["attribute", "dla"])
def test_sharded_merge_equals_unsharded(cmd, tiny_llama_dir, probe_file, tmp_path):
    base = [cmd, "--model", str(tiny_llama_dir), "--probes", str(probe_file), "--format", "plain"]
    assert main(base + ["--out", str(tmp_path / "full.csv")]) == 0
    for i in range(3):
        assert main(base + ["--out", str(tmp_path / f"part{i}.csv"), "--shard", f"{i}/3"]) == 0
    parts = [str(tmp_path / f"part{i}.csv") for i in (2, 0, 1)]  # any order
    assert main(["merge", str(tmp_path / "merged.csv"), *parts]) == 0
    full = canonical(pd.read_csv(tmp_path / "full.csv"))
    merged = pd.read_csv(tmp_path / "merged.csv")
    # probes are batched together, so a shard's batches differ from the full run's: equal up to float32 noise
    pd.testing.assert_frame_equal(full, merged, check_exact=False, rtol=0, atol=1e-5)
    assert len(pd.read_csv(tmp_path / "part0.csv")) < len(full)


def test_merge_refuses_mismatched_or_missing(tiny_llama_dir, probe_file, tmp_path):
    base = ["attribute", "--model", str(tiny_llama_dir), "--probes", str(probe_file), "--format", "plain"]
    main(base + ["--out", str(tmp_path / "a0.csv"), "--shard", "0/2"])
    main(base + ["--out", str(tmp_path / "a1.csv"), "--shard", "1/2", "--method", "loo_replace"])
    with pytest.raises(ShardError, match="different runs"):
        merge_parts([tmp_path / "a0.csv", tmp_path / "a1.csv"], tmp_path / "m.csv")
    with pytest.raises(ShardError, match=r"need shards 0..1 exactly once, got \[0\]"):
        merge_parts([tmp_path / "a0.csv"], tmp_path / "m.csv")
    main(base + ["--out", str(tmp_path / "full.csv")])  # same run, unsharded: no sidecar, not a part
    assert not (tmp_path / "full.csv.shard.json").exists()
    with pytest.raises(ShardError, match="not written with --shard"):
        merge_parts([tmp_path / "a0.csv", tmp_path / "full.csv"], tmp_path / "m.csv")


def test_shard_parsing():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    assert take_shard(list(range(7)), (1, 3)) == [1, 4]
    for bad in ("4/4", "x", "1/0", ""):
        with pytest.raises(UnpactError, match="--shard"):
            parse_shard(bad)
