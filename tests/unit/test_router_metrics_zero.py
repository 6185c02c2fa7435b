"""Counters with a closed label set are exported at zero before their first event, so that
`rate()` and `increase()` (the overload and authentication panels, the alerts) count it."""

from __future__ import annotations

from prometheus_client import generate_latest

from modelflock.router.accounting import RouterMetrics


def test_closed_label_sets_are_exported_at_zero_before_any_request() -> None:
    text = generate_latest(RouterMetrics().registry).decode()
    for line in (
        'modelflock_router_shed_requests_total{reason="overloaded"} 0.0',
        'modelflock_router_shed_requests_total{reason="memory"} 0.0',
        'modelflock_router_auth_failures_total{reason="missing"} 0.0',
        'modelflock_router_auth_failures_total{reason="invalid"} 0.0',
        'modelflock_router_config_reloads_total{result="success"} 0.0',
        'modelflock_router_config_reloads_total{result="error"} 0.0',
    ):
        assert line in text.splitlines(), line


def test_a_counted_event_adds_to_its_zero_series() -> None:
    metrics = RouterMetrics()
    metrics.shed.inc(("memory",))
    text = generate_latest(metrics.registry).decode().splitlines()
    assert 'modelflock_router_shed_requests_total{reason="memory"} 1.0' in text
    assert 'modelflock_router_shed_requests_total{reason="overloaded"} 0.0' in text
