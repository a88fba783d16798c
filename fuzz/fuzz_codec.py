"""Coverage-guided fuzzing of the protocol decoders with atheris (libFuzzer).

Any bytes in → commands, rejected commands or a ProtocolError; never another
exception. The same property is checked with hypothesis in
tests/protocol/test_codec.py; this explores much further by following coverage.

    .venv/bin/python fuzz/fuzz_codec.py -runs=200000     # bounded run
    .venv/bin/python fuzz/fuzz_codec.py fuzz/corpus      # open-ended, keeps a corpus

tests/protocol/test_fuzz.py runs a short bounded run in CI.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from kizuna.exceptions import ProtocolError
    from kizuna.protocol import codec
    from kizuna.protocol.cursor import decode_cursor


def one_input(data: bytes) -> None:
    try:
        commands = codec.decode_frame(data)
    except ProtocolError:
        pass
    else:
        assert commands, "a frame that decodes holds at least one command"
    with contextlib.suppress(ProtocolError):
        decode_cursor(data.decode("utf-8", errors="replace"))


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
