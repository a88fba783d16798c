"""Why the load balancer pins Socket.IO by client address (deploy/nginx/nginx.conf).

An Engine.IO polling session lives in the memory of the node that opened it:
its next request must reach that same node. Native transports carry their
position with them instead (test_cursors.py), which is why only
``/socket.io/`` is hashed by client address.
"""

from __future__ import annotations

import json

import httpx

from tests.support.processes import KizunaProcess


async def test_a_polling_session_is_unknown_to_the_other_nodes(
    three: list[KizunaProcess], http: httpx.AsyncClient
) -> None:
    query = {"EIO": "4", "transport": "polling"}
    opened = await http.get(f"{three[0].url}/socket.io/", params=query)
    assert opened.status_code == 200 and opened.text.startswith("0")  # Engine.IO "open"
    sid = json.loads(opened.text[1:])["sid"]
    for other in three[1:]:
        elsewhere = await http.get(f"{other.url}/socket.io/", params={**query, "sid": sid})
        assert elsewhere.status_code == 400
        assert "session" in elsewhere.text.lower()
    # The node that holds the session accepts the same request (a namespace connect).
    sent = await http.post(f"{three[0].url}/socket.io/", params={**query, "sid": sid}, content="40")
    assert (sent.status_code, sent.text) == (200, "OK")
