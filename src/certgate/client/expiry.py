"""The one sentence every client says when its certificate has expired.

Standard library only: the kube credential plugin, which kubectl starts for every call,
imports it too.
"""

from __future__ import annotations

from datetime import datetime


def expired_message(expires: datetime) -> str:
    return f"your certificate expired at {expires:%Y-%m-%d %H:%M:%S %Z}: run cgsh login"
