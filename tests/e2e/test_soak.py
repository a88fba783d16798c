"""The soak in short: churn plus steady traffic, then no loss, no RSS growth, no fd leak.

bench/soak.py runs the same for 10 minutes (``python -m bench.soak``); here 15 s.
"""

from __future__ import annotations

import httpx

from bench.soak import soak
from kizuna.core.auth import mint_token
from tests.support.processes import API_KEY, JWT_SECRET, KizunaProcess


async def test_short_soak_loses_nothing_and_leaks_nothing() -> None:
    with KizunaProcess() as server:
        assert server.process is not None
        headers = {"Authorization": f"apikey {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers) as http:

            def publish(channel: str, data: object) -> None:
                http.post(
                    "/api/publish", json={"channel": channel, "data": data}
                ).raise_for_status()

            result = await soak(
                server.ws_url,
                server.process.pid,
                mint_token(JWT_SECRET, "soak"),
                seconds=15,
                churners=8,
                rate=40,
                publish=publish,
                warmup=0.4,
            )
    assert result.churned > 100, result
    assert result.published > 300, result
    assert result.lost == 0, result
    assert result.out_of_order == 0, result
    assert result.fds_after == result.fds_before, result
    assert abs(result.rss_growth) <= 0.05, result
