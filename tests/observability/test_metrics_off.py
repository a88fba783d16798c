"""``--no-metrics``: nothing is counted or served, and the node works as before."""

from __future__ import annotations

import httpx

from tests.support.processes import serve


def test_metrics_off_serves_no_metrics_and_still_publishes() -> None:
    with serve("--no-metrics") as server:
        assert httpx.get(server.url + "/metrics").status_code == 404
        assert httpx.get(server.url + "/dashboard/stats").status_code == 404
        published = server.api("publish", channel="chat:off", data=1)
        assert published.status_code == 200
        assert published.json()["result"]["offset"] == 1
    with serve() as server:
        assert "websocket_connections_total" in httpx.get(server.url + "/metrics").text
