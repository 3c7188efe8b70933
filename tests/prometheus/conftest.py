"""The Prometheus tests run real parts (Debian's prometheus, promtool, prometheus-node-exporter) and are
run by ``make test-prometheus`` (which installs them), not by ``make test``: they skip unless
ZOO_PROMETHEUS_TESTS=1, and with a one-line reason where the parts are missing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from benchmarks import promstack

FLEET = {"n_hosts": 50, "days": 7, "step_s": 60}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    if os.environ.get("ZOO_PROMETHEUS_TESTS") != "1":
        reason = "real Prometheus parts: run by make test-prometheus (ZOO_PROMETHEUS_TESTS=1)"
    elif (missing := promstack.missing_parts()) is not None:
        reason = missing
    if reason:
        for item in items:
            if Path(item.fspath).parent == here:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def fleet_prometheus(tmp_path_factory):
    """A Prometheus serving a backfilled fleet (50 hosts x 7 days x 1 min of node_exporter series, ending
    3 h ago on the hour) from a temporary data folder; yields (url, fleet info)."""
    folder = tmp_path_factory.mktemp("fleet-prom")
    end = (time.time() // 3600) * 3600 - 3 * 3600
    om = folder / "fleet.om"
    info = promstack.fleet_openmetrics(om, FLEET["n_hosts"], FLEET["days"], FLEET["step_s"], end)
    promstack.backfill(om, folder / "server" / "data")
    om.unlink()  # 300 MB
    with promstack.prometheus(folder / "server") as url:
        yield url, info
