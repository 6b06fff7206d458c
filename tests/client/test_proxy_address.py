"""`cgsh login --proxy=` takes what users copy: a URL or HOST:PORT."""

from __future__ import annotations

import pytest

from certgate.client.login import proxy_address
from certgate.errors import BadParameter


@pytest.mark.parametrize(
    ("typed", "address"),
    [
        ("proxy.example.com:3080", "proxy.example.com:3080"),
        ("https://proxy.example.com:3080", "proxy.example.com:3080"),
        ("https://proxy.example.com:3080/", "proxy.example.com:3080"),
        ("https://proxy.example.com", "proxy.example.com:443"),
        ("proxy.example.com", "proxy.example.com:3080"),
        ("127.0.0.1:4000", "127.0.0.1:4000"),
        ("https://[::1]:3080", "[::1]:3080"),
        (" https://Proxy.Example.com:3080 ", "proxy.example.com:3080"),
    ],
)
def test_accepted_forms(typed: str, address: str) -> None:
    assert proxy_address(typed) == address


@pytest.mark.parametrize(
    "typed",
    [
        "http://proxy.example.com:3080",  # never plain HTTP
        "https://proxy.example.com:3080/web/invite/abc",
        "https://user:pw@proxy.example.com:3080",
        "proxy.example.com:port",
        "https://",
        "",
        "proxy.example.com:0",  # before, read as the default port
        "[::1",  # before, a ValueError traceback
        "https://[zz]:1",
    ],
)
def test_refused_forms(typed: str) -> None:
    with pytest.raises(BadParameter):
        proxy_address(typed)
