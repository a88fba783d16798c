"""The operations page lists every setting, so operators never meet an undocumented one."""

from __future__ import annotations

from pathlib import Path

import pytest

from kizuna.config import SETTABLE, env_name

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", [f.name for f in SETTABLE])
def test_every_setting_is_in_operations_md(name: str) -> None:
    text = (DOCS / "operations.md").read_text()
    assert f"`{name}`" in text
    assert f"`{env_name(name)}`" in text
