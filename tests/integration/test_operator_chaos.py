"""Chaos (bounded, for `make test`): 20 SIGKILLs of the leading operator at random points of its
reconciles, with spec changes in between, on the real control plane. Afterwards: everything
converges, no orphaned children, no double scaling or spurious rollout, no traceback
(tests/operator_chaos.py). bench/operator_chaos.py runs the long version and prints figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster import LocalCluster

from operator_chaos import Chaos
from support import OperatorProcess, without_session_operator

pytestmark = pytest.mark.cluster

NS = "chaos"
KILLS = 20
LEASE = 4


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    with without_session_operator(cluster, operator, NS):
        yield NS


def test_leader_killed_twenty_times_mid_reconcile(cluster: LocalCluster, tmp_path: Path) -> None:
    chaos = Chaos(cluster, NS, tmp_path, seed=14, lease=LEASE)
    try:
        chaos.start()
        for _ in range(KILLS):
            chaos.kill_leader(max_delay=0.6)
        converged = chaos.wait_converged(timeout=60)
        report = chaos.check()
    finally:
        chaos.stop()
    print(
        f"chaos: {report.kills} kills, {report.spec_changes} spec changes, takeover median "
        f"{statistics.median(report.takeovers):.1f}s max {max(report.takeovers):.1f}s, "
        f"converged {converged:.1f}s after the last takeover, "
        f"{report.events_repeated} events posted again after a kill"
    )
    assert report.kills == KILLS
    assert report.problems() == []
    # A standby waits for the lease to expire (LEASE s from the last renewal) and then leads.
    assert max(report.takeovers) <= LEASE + 4
