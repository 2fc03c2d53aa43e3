"""``--executor ray``: a local Ray cluster with 2 CPU actors gives the single-process tables (tiny models and
SmolLM2); a killed driver or a killed actor still ends with every probe exactly once; a probe that errors is
recorded and the rest complete; bad values and a missing Ray are one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from unpact_mech.cli import main
from unpact_mech.probes import Probe, save_probes

ray = pytest.importorskip("ray")
# The tests on the module's local Ray cluster are slow (a cluster start) and share one pytest-xdist worker
# (xdist_group; make test runs --dist loadgroup), which starts one cluster for them.

UNPACT = [str(Path(sys.executable).with_name("unpact"))]


def _env() -> dict[str, str]:
    """This process's environment as it is now (after ``ray.init``: with its auth mode, so a child can join)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs) for the module; commands join it with ``--executor ray=ADDRESS``."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _probes(path: Path, n: int, bad: int | None = None) -> Path:
    words = "what is the capital of france ? who wrote hamlet the symbol gold red planet mars paris".split()
    ps = [Probe(f"p{i}", " ".join(words[(i + k) % len(words)] for k in range(4 + i % 5)),
                "the capital of france is paris", fact="paris", split="forget") for i in range(n)]
    if bad is not None:  # longer than the tiny model's 128 positions: a user error (ProbeError)
        ps[bad] = Probe(f"p{bad}", " ".join(["gold"] * 200), "paris", split="forget")
    return save_probes(ps, path)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows, columns and order; numbers equal up to float32 batching (scores of a few units: atol 1e-5)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False,
                                  atol=1e-5, rtol=1e-5, check_dtype=False)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_tiny_tables_equal_single_process(cluster, tmp_path, tiny_llama_dir, tiny_llama_other_dir):
    probes = _probes(tmp_path / "p.jsonl", 6)
    m, o = str(tiny_llama_dir), str(tiny_llama_other_dir)
    ray_args = ["--executor", f"ray={cluster}", "--actors", "2"]
    for cmd, args in (("attribute", ["--model", m]), ("dla", ["--model", m]), ("paths", ["--model", m]),
                      ("compare", ["--base", m, "--unlearned", o])):
        for tag, extra in (("local", []), ("ray", ray_args)):
            assert main([cmd, *args, "--probes", str(probes), "--out", str(tmp_path / f"{cmd}_{tag}.csv"),
                         *extra]) == 0
        _same(pd.read_csv(tmp_path / f"{cmd}_local.csv"), pd.read_csv(tmp_path / f"{cmd}_ray.csv"))
        assert len(list((tmp_path / f"{cmd}_ray.csv.ray" / "done").glob("*.json"))) == 6
    local = json.loads((tmp_path / "compare_local.summary.json").read_text())
    got = json.loads((tmp_path / "compare_ray.summary.json").read_text())
    assert got == pytest.approx(local, abs=1e-6)
    for tag, extra in (("local", []), ("ray", ray_args)):
        assert main(["patch", "--base", m, "--unlearned", o, "--probes", str(probes), "--n", "2", "--kinds",
                     "resid_pre", "--direction", "base->unlearned,unlearned->base", "--out",
                     str(tmp_path / f"patch_{tag}"), *extra]) == 0
    for t in ("patch_positions.csv", "patch_heads.csv"):
        _same(pd.read_csv(tmp_path / "patch_local" / t), pd.read_csv(tmp_path / "patch_ray" / t))


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_failed_probe_is_recorded_and_rest_complete(cluster, tmp_path, tiny_llama_dir, capsys):
    probes = _probes(tmp_path / "p.jsonl", 5, bad=2)
    out = tmp_path / "a.csv"
    rc = main(["attribute", "--model", str(tiny_llama_dir), "--probes", str(probes), "--out", str(out),
               "--executor", f"ray={cluster}", "--actors", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "probe 2 (p2) failed" in err and "1 of 5 probe(s) failed" in err
    assert json.loads((tmp_path / "a.csv.ray" / "done" / "2.json").read_text())["error"]
    assert sorted(pd.read_csv(out).probe_id.unique()) == ["p0", "p1", "p3", "p4"]


def _wait_done(parts: Path, k: int, proc: subprocess.Popen, limit: float = 240) -> None:
    t0 = time.time()
    while len(list((parts / "done").glob("*.json"))) < k:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < limit, "the Ray run made no progress"
        time.sleep(0.05)


def _no_duplicates(table: pd.DataFrame, probes: Path) -> None:
    ids = [json.loads(line)["id"] for line in probes.read_text().splitlines()]
    assert sorted(table.probe_id.unique()) == sorted(ids)
    assert not table.duplicated(["probe_id", "position"]).any()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_smollm2_killed_driver_resumes_and_killed_actor_is_retried(cluster, tmp_path, smol):
    """SmolLM2, 2 CPU actors: equal to the single-process table; SIGKILL the driver mid-run and rerun; then kill
    one actor process mid-run: both end with every probe once and the single-process numbers."""
    from unpact_mech.evals.loaders import load_benchmark

    probes = save_probes(load_benchmark("facts", split="forget")[:6], tmp_path / "p.jsonl")
    local = tmp_path / "local.csv"
    assert main(["attribute", "--probes", str(probes), "--out", str(local)]) == 0
    want = pd.read_csv(local)
    cmd = [*UNPACT, "attribute", "--probes", str(probes), "--executor", f"ray={cluster}", "--actors", "2"]

    out = tmp_path / "killed_driver.csv"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_done(Path(f"{out}.ray"), 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(Path(f"{out}.ray", "done").glob("*.json")))
    assert 2 <= kept < 6 and not out.exists()
    rerun = subprocess.run([*cmd, "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{6 - kept} probe(s) run here, {kept} resumed" in rerun.stderr
    _same(want, pd.read_csv(out))
    _no_duplicates(pd.read_csv(out), probes)

    import psutil

    out = tmp_path / "killed_actor.csv"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_done(Path(f"{out}.ray"), 1, proc)
    actors = [p for p in psutil.process_iter(["cmdline"]) if "MapWorker" in " ".join(p.info["cmdline"] or [])]
    assert actors, "no Ray actor process found"
    actors[0].kill()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    _same(want, pd.read_csv(out))
    _no_duplicates(pd.read_csv(out), probes)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_another_run_in_the_same_parts_is_refused(cluster, tmp_path, tiny_llama_dir, capsys):
    probes = _probes(tmp_path / "p.jsonl", 2)
    base = ["--model", str(tiny_llama_dir), "--probes", str(probes), "--out", str(tmp_path / "d.csv"),
            "--executor", f"ray={cluster}"]
    assert main(["dla", *base]) == 0
    (tmp_path / "d.csv").unlink()
    assert main(["dla", *base, "--target", "logit_diff"]) == 2
    err = capsys.readouterr().err
    assert "holds the parts of another run" in err and "target: 'logit' -> 'logit_diff'" in err


@pytest.mark.parametrize("value, msg", [
    ("spark", "--executor takes local, ray or ray=ADDRESS"),
    ("ray=", "--executor takes local, ray or ray=ADDRESS"),
    ("local=x", "--executor takes local, ray or ray=ADDRESS"),
    ("ray=nohost", "the address is HOST:PORT"),
    ("ray=10.0.0.5:99999", "the address is HOST:PORT"),
])
def test_bad_executor_values(value, msg, capsys):
    assert main(["dla", "--prompt", "a", "--answer", "b", "--executor", value]) == 2
    assert msg in capsys.readouterr().err


def test_unreachable_address_and_missing_ray_fail_before_loading(tmp_path, monkeypatch, capsys):
    args = ["dla", "--prompt", "a", "--answer", "b", "--out", str(tmp_path / "x.csv")]
    t0 = time.time()
    assert main([*args, "--executor", "ray=127.0.0.1:1"]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err and time.time() - t0 < 10
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main([*args, "--executor", "ray"]) == 2
    assert "needs Ray Data, which is not installed: pip install 'ray[data]'" in capsys.readouterr().err
    assert main(["dla", "--prompt", "a", "--answer", "b", "--actors", "2"]) == 2
    assert "--actors is used only by --executor ray" in capsys.readouterr().err
