"""Names people type: ids by any unique prefix (as git does), near misses suggested.

Pure functions over the candidates a caller already fetched, so cgsh and cgctl resolve
session, recording and access request ids the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from certgate.errors import BadParameter, NotFound

_ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


def is_id_prefix(text: str) -> bool:
    """Whether `text` could begin a session, recording or request id (a UUID)."""
    return bool(_ID_PREFIX.fullmatch(text))


def resolve_prefix(candidates: Iterable[str], prefix: str, what: str) -> str:
    """The one candidate equal to or starting with `prefix`.

    NotFound when none does; BadParameter naming a few when several do (the user
    types more characters).
    """
    names = sorted(set(candidates))
    if prefix in names:
        return prefix
    matches = [name for name in names if name.startswith(prefix)] if prefix else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f'{what} "{prefix}" not found')
    shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
    raise BadParameter(
        f'{what} id "{prefix}" is ambiguous: {len(matches)} match ({shown}); type more of it'
    )


def did_you_mean(candidates: Iterable[str], name: str) -> str:
    """`; did you mean "x"?` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(set(candidates)), n=1, cutoff=0.75)
    return f'; did you mean "{close[0]}"?' if close else ""
