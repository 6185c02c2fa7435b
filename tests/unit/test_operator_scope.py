"""Which namespaces the operator serves (command line over configuration), and the leader
election settings it accepts."""

from __future__ import annotations

import argparse

import pytest

from modelflock.controller.main import watched_namespaces
from modelflock.operator_config import ConfigError, parse_operator_config


def args(all_namespaces: bool = False, namespace: list[str] | None = None) -> argparse.Namespace:
    return argparse.Namespace(all_namespaces=all_namespaces, namespace=namespace or [])


@pytest.mark.parametrize(
    ("config", "cli", "expected"),
    [
        ({}, args(all_namespaces=True), (True, ())),
        ({}, args(namespace=["a", "b", "a"]), (False, ("a", "b"))),
        ({"watchNamespaces": ["team-a", "team-b"]}, args(), (False, ("team-a", "team-b"))),
        # The command line wins over the configuration, both ways.
        ({"watchNamespaces": ["team-a"]}, args(all_namespaces=True), (True, ())),
        ({"watchNamespaces": ["team-a"]}, args(namespace=["x"]), (False, ("x",))),
        ({}, args(), "pass --all-namespaces or --namespace NS"),
        ({}, args(all_namespaces=True, namespace=["a"]), "not both"),
    ],
)
def test_watched_namespaces(
    config: dict[str, object], cli: argparse.Namespace, expected: object
) -> None:
    result = watched_namespaces(parse_operator_config(config), cli)
    if isinstance(expected, str):
        assert isinstance(result, str) and expected in result
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"watchNamespaces": ["a", "a"]}, "watchNamespaces: repeated namespaces ['a']"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0: String should match pattern"),
        (
            {"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}},
            "leaderElection: Value error, renewDeadlineSeconds must be below leaseDurationSeconds",
        ),
        (
            {"leaderElection": {"renewDeadlineSeconds": 2, "retryPeriodSeconds": 2}},
            "retryPeriodSeconds x 1.2 must be below renewDeadlineSeconds",
        ),
        ({"leaderElection": {"leaseName": "Bad Name"}}, "leaderElection.leaseName: String should"),
        ({"leaderElection": {"holder": "x"}}, "leaderElection.holder: Extra inputs"),
    ],
)
def test_bad_settings_are_refused_with_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_operator_config(data)
    assert message in str(raised.value)


def test_leader_election_defaults_are_client_go_defaults() -> None:
    election = parse_operator_config({}).leader_election
    assert election.lease_name == "modelflock-operator" and election.lease_namespace is None
    assert (
        election.lease_duration_seconds,
        election.renew_deadline_seconds,
        election.retry_period_seconds,
    ) == (15, 10, 2)
