"""The test suite's own machinery: under ``make test`` (pytest-xdist ``--dist loadgroup``), an ``xdist_group`` keeps
its tests on one worker, so a shared fixture (a Ray cluster, the demo's run) is built once."""

import os

import pytest


@pytest.mark.xdist_group("suite_probe")
def test_an_xdist_group_reaches_the_scheduler(request):
    if not os.environ.get("PYTEST_XDIST_WORKER") or request.config.getvalue("dist") != "no" or not getattr(
            request.config.option, "loadgroup", False):
        pytest.skip("not under pytest-xdist --dist loadgroup (make test runs it so)")
    # xdist's loadgroup scheduler groups by this suffix; pytest 9.2 with xdist 3.8 lost it (pyproject pins pytest)
    assert request.node.nodeid.endswith("@suite_probe"), request.node.nodeid
