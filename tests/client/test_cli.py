"""``kizuna sub`` / ``kizuna pub`` as an operator runs them: real processes, a real server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from kizuna.client.cli import add_client_commands, run_pub, run_sub
from tests.client.support import TIMEOUT, token
from tests.support.processes import KizunaProcess, kizuna_command


async def cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None
) -> asyncio.subprocess.Process:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_")}
    full_env.update(env)
    return await asyncio.create_subprocess_exec(
        *kizuna_command(),  # the installed `kizuna` script, as an operator runs it
        *args,
        env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await cli(*args, env=env, stdin=stdin)
    out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_commands_plug_into_an_argparse_parser() -> None:
    parser = argparse.ArgumentParser(prog="kizuna")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    sub = parser.parse_args(["sub", "chat:a", "chat:b", "--count", "3"])
    assert (sub.run, sub.channels, sub.count) == (run_sub, ["chat:a", "chat:b"], 3)
    pub = parser.parse_args(["pub", "chat:a", '{"x": 1}', "--url", "ws://h/connection/websocket"])
    assert (pub.run, pub.channel, pub.data, pub.url) == (
        run_pub,
        "chat:a",
        '{"x": 1}',
        ["ws://h/connection/websocket"],
    )


async def test_sub_prints_what_pub_publishes(shared_kizuna: KizunaProcess) -> None:
    env = {"KIZUNA_URL": shared_kizuna.ws_url, "KIZUNA_TOKEN": token("operator")}
    sub = await cli("sub", "chat:cli", "chat:cli2", "--count", "3", env=env)
    assert sub.stderr is not None and sub.stdout is not None
    notices = [(await asyncio.wait_for(sub.stderr.readline(), TIMEOUT)).decode() for _ in "123"]
    assert notices[0].startswith("kizuna sub: connected to ws://")
    assert sorted(notices[1:]) == [
        "kizuna sub: subscribed to chat:cli (offset 0)\n",
        "kizuna sub: subscribed to chat:cli2 (offset 0)\n",
    ]

    status, out, err = await run("pub", "chat:cli", '{"n": 1, "text": "héllo"}', env=env)
    assert (status, err) == (0, "")
    first = json.loads(out)
    assert first["offset"] == 1 and isinstance(first["epoch"], str)
    assert (await run("pub", "chat:cli2", '"two"', env=env))[0] == 0
    status, _, _ = await run("pub", "chat:cli", "-", env=env, stdin=b'[3, "from stdin"]\n')
    assert status == 0

    out_bytes, _ = await asyncio.wait_for(sub.communicate(), TIMEOUT)
    assert sub.returncode == 0
    lines = [json.loads(line) for line in out_bytes.decode().splitlines()]
    assert [(line["channel"], line["offset"], line["data"]) for line in lines] == [
        ("chat:cli", 1, {"n": 1, "text": "héllo"}),
        ("chat:cli2", 1, "two"),
        ("chat:cli", 2, [3, "from stdin"]),
    ]
    assert lines[0]["info"]["user"] == "operator"
    assert lines[0]["epoch"] == first["epoch"]


async def test_pub_refuses_data_that_is_not_json(shared_kizuna: KizunaProcess) -> None:
    status, out, err = await run("pub", "chat:cli", "hello", env={"KIZUNA_TOKEN": token()})
    assert (status, out) == (2, "")
    assert "kizuna pub: DATA is not JSON" in err


async def test_pub_reports_the_servers_numbered_refusal(shared_kizuna: KizunaProcess) -> None:
    args = ("--url", shared_kizuna.ws_url, "--token", token())
    status, out, err = await run("pub", "nowhere:x", "1", *args, env={})
    assert (status, out) == (1, "")
    assert err.startswith("kizuna pub: 102 unknown channel")


async def test_pub_gives_up_on_a_bad_token(shared_kizuna: KizunaProcess) -> None:
    status, _, err = await run(
        "pub", "chat:x", "1", "--url", shared_kizuna.ws_url, "--token", "not-a-jwt", env={}
    )
    assert status == 1
    assert "not published: 4002" in err


async def test_sub_exits_when_the_server_disconnects_it_for_good(
    shared_kizuna: KizunaProcess,
) -> None:
    env = {"KIZUNA_URL": shared_kizuna.ws_url, "KIZUNA_TOKEN": token("to-be-kicked")}
    sub = await cli("sub", "chat:kick", env=env)
    assert sub.stderr is not None
    for _ in range(2):  # connected, subscribed
        await asyncio.wait_for(sub.stderr.readline(), TIMEOUT)
    kicked = await asyncio.to_thread(shared_kizuna.api, "disconnect", user="to-be-kicked")
    assert kicked.json() == {"result": {"disconnected": 1}}
    _, err = await asyncio.wait_for(sub.communicate(), TIMEOUT)
    assert sub.returncode == 1
    assert "kizuna sub: disconnected: 4003 forbidden" in err.decode()
