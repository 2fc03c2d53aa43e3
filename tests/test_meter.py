"""What a stage cost: wall seconds and peak resident memory per (nested) block, recorded in its stamp file without
becoming part of the stamp, and shown in the report's settings."""

import json
import time

import numpy as np

from unpact_mech.meter import measure, process_peak_bytes, rss_bytes
from unpact_mech.pipeline import COST, read_cost, read_stamp, stage

MB = 1_000_000


def _touch(nbytes: int) -> np.ndarray:
    """An array whose every page is written (so it is resident), of ``nbytes``."""
    a = np.ones(nbytes // 8, dtype=np.float64)
    assert a.sum() == nbytes // 8
    return a


def test_nested_blocks_have_their_own_peaks_and_the_outer_sees_the_inner():
    base = rss_bytes()
    with measure() as outer:
        small = _touch(50 * MB)
        with measure() as inner:
            big = _touch(400 * MB)
            during = rss_bytes()  # file-backed pages (a model's mmap) may leave RSS meanwhile: read it now
            time.sleep(0.05)
            del big
        with measure() as after:  # the 400 MB are freed: this block's peak is far below the inner one's
            time.sleep(0.05)
        del small
    t0 = time.perf_counter()
    with measure() as timed:
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    assert during >= base + 300 * MB  # the array was resident
    assert inner["peak_rss_gb"] * 1e9 >= during - 1e5  # the block's peak is at least what it held (GB rounding)
    assert outer["peak_rss_gb"] >= inner["peak_rss_gb"]
    assert after["peak_rss_gb"] * 1e9 <= inner["peak_rss_gb"] * 1e9 - 300 * MB
    assert inner["peak_rss_gb"] * 1e9 <= process_peak_bytes() + MB  # never above what the kernel saw
    assert 0.2 <= timed["seconds"] <= wall + 1e-3


def test_stage_records_its_cost_apart_from_its_stamp(tmp_path):
    out, f = tmp_path / "x.json", tmp_path / "x.stamp.json"
    calls = []

    def compute():
        calls.append(1)
        out.write_text("1")
        return 1

    stamp = {"a": 1, "version": "v"}
    assert stage("x", f, stamp, out.exists, lambda: 2, compute) == 1
    raw = json.loads(f.read_text())
    assert read_stamp(f) == stamp and set(raw) == {*stamp, COST}
    assert read_cost(f)["seconds"] >= 0 and read_cost(f)["peak_rss_gb"] > 0
    assert stage("x", f, stamp, out.exists, lambda: 2, compute) == 2 and calls == [1]  # the cost never invalidates
    f.write_text(json.dumps(stamp))  # a stamp file from before costs were recorded still counts as the stamp
    assert stage("x", f, stamp, out.exists, lambda: 2, compute) == 2 and read_cost(f) is None
