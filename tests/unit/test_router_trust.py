"""What the router trusts (issue 14): discovery data is checked against the config, API keys
and the discovery token only travel over https unless a config opts in. Table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelflock.api.modelexpert import ExternalApi
from modelflock.router.config import Discovery, Expert
from modelflock.router.discovery import endpoint_url, parse_endpoints

EXPERTS = {
    "code": Expert(name="code", urls=["http://code:8000"], model="m"),
    "frontier": Expert(
        name="frontier", engine="external", urls=["https://api.example/v1"], model="big"
    ),
    "keyed": Expert(name="keyed", urls=["https://keyed:8000"], model="k", apiKeyFile=Path("/k")),
}


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("http://10.0.0.5:8000/v1/", "http://10.0.0.5:8000/v1"),
        ("https://[fd00::5]:8443", "https://[fd00::5]:8443"),
        ("http://attacker.example:8000", None),  # host names: not what the operator lists
        ("http://user:pw@10.0.0.5:8000", None),
        ("http://10.0.0.5:8000/steal?x=1", None),
        ("http://10.0.0.5:8000/other", None),
        ("http://10.0.0.5", None),  # the operator always writes the port
        ("ftp://10.0.0.5:21", None),
        ("http://10.0.0.5:99999", None),
        (5, None),
    ],
)
def test_discovered_endpoint_urls(url: object, accepted: str | None) -> None:
    assert endpoint_url(url) == accepted


def _doc(name: str, url: str = "http://10.0.0.9:8000", **extra: Any) -> dict[str, Any]:
    item = {"readyReplicas": 1, "endpoints": [{"url": url, "ready": True}], **extra}
    return {"experts": {name: item}}


@pytest.mark.parametrize(
    ("doc", "live", "ignored"),
    [
        (_doc("code"), {"code": ["http://10.0.0.9:8000"]}, []),
        # An external expert's key must only ever go to its configured URL.
        (_doc("frontier"), {}, ["expert 'frontier' (pinned)"]),
        (_doc("keyed"), {}, ["expert 'keyed' (pinned)"]),
        (_doc("stranger"), {}, ["expert 'stranger' (not in the config)"]),
        (_doc("code", "http://evil.example:80"), {"code": []}, ["endpoint"]),
    ],
)
def test_discovery_is_checked_against_the_config(
    doc: dict[str, Any], live: dict[str, list[str]], ignored: list[str]
) -> None:
    found, skipped = parse_endpoints(doc, EXPERTS)
    assert {k: [e.url for e in v.endpoints] for k, v in found.items()} == live
    assert len(skipped) == len(ignored)
    assert all(want in got for want, got in zip(ignored, skipped, strict=True))


@pytest.mark.parametrize(
    ("value", "cold"), [(45, 45.0), (float("nan"), None), (1e400, None), (-1, None), (True, None)]
)
def test_discovered_cold_start_must_be_plausible(value: object, cold: float | None) -> None:
    found, _ = parse_endpoints(_doc("code", coldStartSeconds=value), EXPERTS)
    assert found["code"].cold_start_seconds == cold


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"engine": "external", "urls": ["https://a.example/v1"]}, True),
        ({"engine": "external", "urls": ["http://a.example/v1"]}, False),
        ({"engine": "external", "urls": ["http://a.example/v1"], "allowPlainHttp": True}, True),
        ({"urls": ["http://a:8000"], "apiKeyFile": "/k"}, False),
        ({"urls": ["http://a:8000"]}, True),  # no key: nothing to leak
    ],
)
def test_an_api_key_travels_over_https_unless_allowed(fields: dict[str, Any], ok: bool) -> None:
    if ok:
        Expert.model_validate({"name": "e", "model": "m", **fields})
    else:
        with pytest.raises(ValidationError, match="allowPlainHttp"):
            Expert.model_validate({"name": "e", "model": "m", **fields})


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"url": "https://op:8090"}, True),
        ({"url": "http://op:8090"}, False),
        ({"url": "http://op:8090", "allowPlainHttp": True}, True),
        ({"url": "file:///etc/passwd", "allowPlainHttp": True}, False),
    ],
)
def test_the_discovery_token_travels_over_https_unless_allowed(
    fields: dict[str, Any], ok: bool
) -> None:
    doc = {"tokenFile": "/t", "namespace": "n", "policy": "p", **fields}
    if ok:
        Discovery.model_validate(doc)
    else:
        with pytest.raises(ValidationError):
            Discovery.model_validate(doc)


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"baseURL": "https://api.example/v1"}, True),
        ({"baseURL": "http://api.example/v1"}, False),
        ({"baseURL": "http://127.0.0.1:9000/v1", "allowPlainHttp": True}, True),
    ],
)
def test_external_base_url_must_be_https_unless_allowed(fields: dict[str, Any], ok: bool) -> None:
    if ok:
        ExternalApi.model_validate({"model": "m", **fields})
    else:
        with pytest.raises(ValidationError, match="allowPlainHttp"):
            ExternalApi.model_validate({"model": "m", **fields})
