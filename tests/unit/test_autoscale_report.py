"""The benchmark's comparison of ours with another version of the algorithm
(bench/autoscale_sim.py, --before-algorithm): runs found by the other version's cache key,
and the table that compares them."""

from __future__ import annotations

from pathlib import Path

import autoscale_tiny  # noqa: F401  (puts bench/ on the path)

from autoscale_sim import (
    FAMILIES,
    Case,
    CaseResult,
    Result,
    Unit,
    _before_runs,
    _fingerprint,
    _store,
    before_table,
)


def result(gpu_hours: float, attainment: float, changes: int) -> Result:
    return Result(
        family="ours",
        knob=FAMILIES[0].default,
        requests=1000,
        attainment=attainment,
        queue_attainment=attainment,
        p95_ttft=0.3,
        p99_ttft=1.0,
        worst_episode=attainment,
        gpu_hours=gpu_hours,
        scale_events=changes + 1,
        direction_changes=changes,
    )


def case(seed: int) -> Case:
    return Case(seed, "70B", "step", False, 10, 0, False)


def test_before_table_compares_the_seeds_both_versions_ran() -> None:
    now = [
        CaseResult(case(1), False, 2, (result(9.0, 0.95, 1),), ()),
        CaseResult(case(2), False, 2, (result(11.0, 0.97, 3),), ()),
        CaseResult(case(3), False, 2, (result(50.0, 0.50, 9),), ()),  # no "before": left out
    ]
    before = {case(1): result(10.0, 0.90, 3), case(2): result(10.0, 0.99, 1)}
    table = before_table(now, before)
    row = next(line for line in table.splitlines() if line.startswith("| 70B | step |"))
    # Means over seeds 1 and 2 (seed 3 has no "before" run): 10.00 -> 10.00 GPU-hours,
    # 94.5 -> 96.0 %, 1.0 -> 1.0 changes per load change (3/2 and 1/2 -> 1/2 and 3/2), within
    # one per change on 1 of 2 either way.
    assert row == "| 70B | step | 10.00 → 10.00 (+0 %) | 94.5 → 96.0 | 1.0 → 1.0 | 1/2 → 1/2 |"
    assert "seeds 1-2): 10.0 → 10.0 GPU-hours (+0.0 %)" in table
    assert "1 → 1 of 2." in table


def test_before_table_says_when_nothing_is_cached() -> None:
    now = [CaseResult(case(1), False, 2, (result(9.0, 0.95, 1),), ())]
    assert before_table(now, {}).startswith("No run of the other version")


def test_before_runs_are_found_by_the_other_algorithm_s_cache_key(tmp_path: Path) -> None:
    old_source = b"# another version of algorithm.py\n"
    old = {"ours": _fingerprint("ours", old_source)}
    assert old["ours"] != _fingerprint("ours")  # this version's runs are keyed apart
    unit = Unit(case(1), "ours", FAMILIES[0].default)
    _store(tmp_path, unit, result(10.0, 0.9, 3), old)
    found = _before_runs(tmp_path, [case(1), case(2)], old_source)
    assert list(found) == [case(1)]
    assert found[case(1)].gpu_hours == 10.0
    assert _before_runs(tmp_path, [case(1)], b"# yet another\n") == {}
