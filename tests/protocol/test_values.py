"""``@value`` (protocol/values.py): immutable to mypy, a plain slotted dataclass at run time."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition


def test_an_assignment_to_a_value_is_a_type_error(tmp_path: Path) -> None:
    snippet = tmp_path / "mutates.py"
    snippet.write_text(
        "from kizuna.protocol.messages import Publication\n"
        "from kizuna.core.ports import PublishOptions\n"
        "pub = Publication(b'1')\n"
        "pub.offset = 2\n"
        "PublishOptions().history_size = 1\n"
    )
    out, _, status = api.run(["--strict", "--no-incremental", str(snippet)])
    assert status == 1
    assert 'Property "offset" defined in "Publication" is read-only' in out
    assert 'Property "history_size" defined in "PublishOptions" is read-only' in out
    assert "Found 2 errors" in out


def test_values_compare_and_hash_by_their_fields() -> None:
    info = ClientInfo("u", "c")
    assert Publication(b"1", 2, info) == Publication(b"1", 2, ClientInfo("u", "c"))
    assert {StreamPosition(1, "e"), StreamPosition(1, "e")} == {StreamPosition(1, "e")}
    assert not hasattr(Publication(b"1"), "__dict__")  # slotted: no dict per publication
