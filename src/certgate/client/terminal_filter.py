"""What `cgsh play` keeps out of the viewer's terminal from a recorded session.

A recording holds whatever the session's programs printed, and its user chose those
programs. Replayed raw in an admin's terminal, some escape sequences act on the admin:

- OSC 52 sets the clipboard (the admin pastes a command the user chose);
- queries make the terminal answer as if typed (DA `CSI c`, DSR `CSI 6 n`, window
  reports `CSI ... t`, DECRQM `CSI ... $ p`, colour queries `OSC 4/10/11;?`, font
  `OSC 50`): once playback ends, the answers reach the admin's shell as input;
- device control strings (DCS, and APC, PM, SOS) carry terminal requests (DECRQSS)
  and passthrough to an outer terminal.

Those are dropped; everything else (colours, cursor moves, titles, hyperlinks) plays as
recorded. Sequences may be split across output events, so the filter carries what it
has not decided yet into the next piece. `cgsh play --raw` turns it off.
"""

from __future__ import annotations

import re

ESC = "\x1b"
BEL = "\x07"
# 8-bit introducers some terminals honour as their ESC forms.
_C1 = {"\x9b": "[", "\x9d": "]", "\x90": "P", "\x9f": "_", "\x9e": "^", "\x98": "X"}
_INTRODUCERS = re.compile("[\x1b\x90\x98\x9b\x9d\x9e\x9f]")
# A CSI: parameters, intermediates, a final byte.
_CSI = re.compile(r"[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]")
_CSI_PARTIAL = re.compile(r"[\x30-\x3f]*[\x20-\x2f]*")
# CSI finals that make the terminal answer: DA, DSR, window reports.
_ANSWERED_CSI = {"c", "n", "t"}
# OSC numbers dropped whatever follows: clipboard, font.
_DROPPED_OSC = {"52", "50"}
# Past this, an undecided sequence is no real one: written as it is.
_MAX_PENDING = 4096


class TerminalOutputFilter:
    def __init__(self) -> None:
        self._pending = ""  # the start of a sequence not decided yet
        self._discarding = False  # inside a string being dropped, until its terminator

    def feed(self, text: str) -> str:
        """What of `text` (the next piece of output) may reach the terminal now."""
        text = self._pending + text
        self._pending = ""
        out: list[str] = []
        position = 0
        while position < len(text):
            if self._discarding:
                end = _string_end(text, position)
                if end is None:
                    # Keep a trailing ESC: it may start the ST that ends the string.
                    self._pending = ESC if text.endswith(ESC) else ""
                    return "".join(out)
                self._discarding = False
                position = end
                continue
            found = _INTRODUCERS.search(text, position)
            if found is None:
                out.append(text[position:])
                break
            out.append(text[position : found.start()])
            taken = self._sequence(text, found.start(), out)
            if taken is None:  # not complete yet: decided with the next piece
                pending = text[found.start() :]
                if len(pending) > _MAX_PENDING:
                    out.append(pending)
                else:
                    self._pending = pending
                break
            position = taken
        return "".join(out)

    def _sequence(self, text: str, start: int, out: list[str]) -> int | None:
        """Decide the sequence at `start`: append what is kept to `out` and return where
        it ends, or None if `text` ends before it does."""
        first = text[start]
        if first == ESC:
            if start + 1 >= len(text):
                return None
            kind, body = text[start + 1], start + 2
        else:
            kind, body = _C1[first], start + 1
        if kind == "[":
            match = _CSI.match(text, body)
            if match is None:
                if _CSI_PARTIAL.fullmatch(text, body):
                    return None
                out.append(text[start:body])  # malformed: as it is
                return body
            sequence = match.group()
            final, intermediates = sequence[-1], sequence[:-1]
            if final in _ANSWERED_CSI or (final == "p" and "$" in intermediates):
                return match.end()
            out.append(text[start : match.end()])
            return match.end()
        if kind == "]":
            end = _string_end(text, body)
            number = text[body : end if end is not None else len(text)].split(";", 1)[0]
            if ";" not in text[body:] and end is None:
                return None  # its number is not known yet
            content = text[body : end - _terminator_length(text, end)] if end is not None else ""
            if number in _DROPPED_OSC or content.endswith("?"):
                if end is None:
                    self._discarding = True  # feed() drops up to its terminator
                    return body
                return end
            if end is None:
                return None
            out.append(text[start:end])
            return end
        if kind in "P_^X":  # DCS, APC, PM, SOS: dropped whole
            self._discarding = True  # feed() drops up to its terminator
            return body
        out.append(text[start : body if first == ESC else start + 1])
        return body if first == ESC else start + 1


def _string_end(text: str, position: int) -> int | None:
    """Just past the BEL or ST (ESC \\ or 8-bit ST) ending a string that runs from
    `position`, or None if `text` ends first."""
    for index in range(position, len(text)):
        char = text[index]
        if char in (BEL, "\x9c"):
            return index + 1
        if char == ESC and index + 1 < len(text) and text[index + 1] == "\\":
            return index + 2
    return None


def _terminator_length(text: str, end: int) -> int:
    """How many characters end the string that ends just before `end`: BEL or 8-bit ST
    is one, ESC \\ two."""
    return 1 if text[end - 1] in (BEL, "\x9c") else 2
