"""The checked-in generated code is exactly what scripts/gen-proto produces from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
GENERATED = ROOT / "src" / "kizuna" / "transports" / "grpc_gen"
FILES = ["chat_pb2.py", "chat_pb2.pyi", "chat_pb2_grpc.py", "chat_pb2_grpc.pyi"]


def test_regenerating_gives_no_diff(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-proto"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    stale = [n for n in FILES if (tmp_path / n).read_bytes() != (GENERATED / n).read_bytes()]
    assert not stale, f"out of date, run scripts/gen-proto: {stale}"


def test_generated_code_imports_from_kizuna_not_from_the_proto_path() -> None:
    """protoc would write ``from kizuna.v1 import chat_pb2``; kizuna.v1 does not exist."""
    grpc_module = (GENERATED / "chat_pb2_grpc.py").read_text()
    assert "from kizuna.transports.grpc_gen import chat_pb2" in grpc_module
    assert "kizuna.v1 import" not in grpc_module
    assert "'kizuna.v1.ChatService'" in grpc_module  # the wire name keeps the proto package
