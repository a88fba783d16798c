"""Each package's public names are explicit (``__all__``) and importable; layers import one way."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import kizuna

SRC = Path(kizuna.__file__).parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(SRC)], "kizuna.") if not m.name.endswith("__main__")
)
OPTIONAL = {"kizuna.broker.redis"}


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ lists missing {exported}"


# protocol ← core ← edges (broker, transports, observability, client) ← server/cli
LAYER = {"protocol": 0, "core": 1, "broker": 2, "transports": 2, "observability": 2, "client": 2}
TOP_LEVEL_OK = {"kizuna", "kizuna.exceptions"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kizuna"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kizuna"))
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path: Path) -> None:
    parts = path.relative_to(SRC).parts
    if len(parts) < 2 or parts[0] not in LAYER:
        return  # server.py, cli.py, config.py sit on top and may import anything
    own = LAYER[parts[0]]
    for module in _imports(path):
        bits = module.split(".")
        if module in TOP_LEVEL_OK or len(bits) < 2:
            continue
        target = bits[1]
        if target in LAYER:
            assert LAYER[target] < own or target == parts[0], f"{path.name} imports {module}"
        else:
            pytest.fail(f"{path.name} (layer {parts[0]}) imports top-level {module}")


def test_bare_install_needs_no_optional_backend() -> None:
    """With redis, grpc and OpenTelemetry missing (as in a bare install), the server builds.

    They cannot simply be absent from ``sys.modules`` here: python-socketio imports
    redis-py whenever it is installed, and redis-py imports OpenTelemetry. So the
    subprocess makes them uninstallable and builds a default server.
    """
    import subprocess
    import sys

    code = """
import importlib.abc, sys
MISSING = {"redis", "grpc", "grpc_health", "grpc_reflection", "opentelemetry"}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in MISSING:
            raise ImportError(f"{name} is not installed (simulated bare install)")
sys.meta_path.insert(0, Missing())
from kizuna.config import load_config
from kizuna.server import Server
server = Server(load_config(env={"KIZUNA_JWT_SECRET": "x" * 32}))
assert server.config.grpc_port == 50051
print("built")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "built"
