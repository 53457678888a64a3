"""The status page itself: one self-contained HTML document, served by `broker/http.py`.

Its parts live beside this module as plain files — ``static/status.html`` (the body),
``status.css`` and ``status.js`` — and are put together once, here, into one document with
the style and the script inline. No outside scripts, fonts or stylesheets: the page builds
every element from the JSON endpoints with `textContent` (never `innerHTML`), so task ids,
names and tracebacks are shown as text whatever they contain, and the server sends a
Content-Security-Policy that allows exactly these two inline blocks, by hash.

The script polls ``api/status.json`` and ``api/history.json?since=T`` once a second (relative
paths, so the page also works behind a proxy under a prefix), keeps the last 300 samples for
its charts, and fetches ``api/failures.json`` only when the newest failure changes.
"""

import base64
import hashlib
import os

__all__ = ["PAGE", "STYLE", "SCRIPT", "content_security_policy"]

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def _read(name):
    with open(os.path.join(_STATIC, name), encoding="utf-8") as handle:
        return "\n" + handle.read()


STYLE = _read("status.css")
SCRIPT = _read("status.js")
PAGE = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>minitask broker</title>\n<link rel=\"icon\" href=\"data:,\">\n"
        "<style>" + STYLE + "</style>\n</head>\n<body>" + _read("status.html")
        + "<script>" + SCRIPT + "</script>\n</body>\n</html>\n")


def _sha256(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def content_security_policy():
    """Only this page's own inline style and script may run, and only same-origin fetches."""
    return ("default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            % (_sha256(SCRIPT), _sha256(STYLE)))
