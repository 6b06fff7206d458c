"""`cgsh play` keeps out of the viewer's terminal what a recorded user could aim at it:
the clipboard (OSC 52), queries whose answers the terminal types into the viewer's
shell, device control strings; and plays everything else as recorded, however the
output was split into events."""

from __future__ import annotations

import pytest

from certgate.client.terminal_filter import TerminalOutputFilter

E = "\x1b"

DROPPED = [
    f"{E}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07",  # set the clipboard, BEL
    f"{E}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA=={E}\\",  # ... ST
    f"{E}]52;c;{'A' * 20_000}\x07",  # longer than anything kept pending
    f"{E}[c",  # DA: the terminal answers
    f"{E}[>0c",
    f"{E}[6n",  # cursor position report
    f"{E}[21t",  # window title report
    f"{E}[?2004$p",  # DECRQM
    f"{E}]11;?\x07",  # background colour query
    f"{E}]4;1;?{E}\\",  # palette query, ST
    f"{E}]50;?\x07",  # font query
    f"{E}P$qm{E}\\",  # DECRQSS
    f"{E}_anything{E}\\",  # APC
    "\x9b6n",  # the 8-bit CSI form
    "\x9d52;c;eA==\x07",
]
KEPT = [
    f"{E}[1;31mred{E}[0m",
    f"{E}[2J{E}[H",
    f"{E}]0;a title\x07",
    f"{E}]8;;https://example.com\x07link{E}]8;;\x07",
    f"{E}(B",
    "plain text, é and ✓",
]


@pytest.mark.parametrize("sequence", DROPPED)
def test_a_sequence_aimed_at_the_viewer_is_dropped(sequence: str) -> None:
    assert TerminalOutputFilter().feed(f"before{sequence}after") == "beforeafter"


@pytest.mark.parametrize("text", KEPT)
def test_output_plays_as_recorded(text: str) -> None:
    assert TerminalOutputFilter().feed(text) == text


@pytest.mark.parametrize("text", [f"a{s}b{k}c" for s in DROPPED for k in KEPT[:3]])
def test_split_anywhere_across_events_the_result_is_the_same(text: str) -> None:
    whole = TerminalOutputFilter().feed(text)
    for cut in range(1, len(text), max(1, len(text) // 40)):
        pieces = TerminalOutputFilter()
        assert pieces.feed(text[:cut]) + pieces.feed(text[cut:]) == whole, cut
