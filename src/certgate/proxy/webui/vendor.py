"""/web/static/vendor/<name>: the JavaScript libraries `make install` copied from npm.

Only the files named here are served; the set is what the Makefile's web-assets copies."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_FILES = {
    "xterm.js": "text/javascript",
    "xterm.css": "text/css",
    "addon-fit.js": "text/javascript",
    "asciinema-player.js": "text/javascript",
    "asciinema-player.css": "text/css",
}


async def vendor_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _FILES:
        raise web.HTTPNotFound()
    try:
        body = (resources.files("certgate.web") / "static" / "vendor" / name).read_bytes()
    except OSError:
        raise web.HTTPNotFound(text=f"{name} is missing: run make install") from None
    return web.Response(body=body, content_type=_FILES[name])
