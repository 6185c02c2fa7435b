"""The second listener a sidecar uses: metrics and probes on one address, the API on another."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml

from modelflock.router.app import RouterServer


async def test_ops_listener_serves_metrics_and_probes_but_not_the_api(tmp_path: Path) -> None:
    config = {
        "experts": [{"name": "small", "urls": ["http://127.0.0.1:9"], "model": "small"}],
        "routes": [{"name": "all", "expert": "small"}],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    server = RouterServer(path)
    await server.start("127.0.0.1", 0)
    await server.start_ops("127.0.0.1", 0)
    try:
        assert server.ops_port not in (0, server.port)
        ops = f"http://127.0.0.1:{server.ops_port}"
        async with aiohttp.ClientSession() as session:
            for probe in ("/healthz", "/readyz"):
                async with session.get(ops + probe) as response:
                    assert response.status == 200
            async with session.get(ops + "/metrics") as response:
                assert response.status == 200
                assert "modelflock_router_" in await response.text()
            async with session.get(ops + "/v1/models") as response:
                assert response.status == 404  # the OpenAI API is not on the ops address
            async with session.get(server.url + "/v1/models") as response:
                assert response.status == 200
    finally:
        await server.stop()
