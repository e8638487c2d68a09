"""The page at `GET /` for trying pairs in a browser, and its assets.

The files live in `page/` beside this module (package data: no build step, no
resource from elsewhere, so the page works offline). Only those files are
served, looked up by exact name, so a path such as `/../setup.cfg` or
`/page/` matches nothing and the server answers 404. The page posts to the
server's own `:predict` (and, for its "why" view, `:explain`), whose paths and
labels are written into `index.html` when it is served, so `--model-name` is
honoured.

Example:
    >>> asset = page_asset("/", "mmentail")
    >>> asset.content_type, b'content="v1/models/mmentail:predict"' in asset.body
    ('text/html; charset=utf-8', True)
    >>> page_asset("/../setup.cfg", "mmentail") is None
    True
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
from importlib import resources

from mmentail.schema import LABELS

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".js": "text/javascript; charset=utf-8"}
_ALIASES = {"/": "index.html"}
# Same-origin only: the page loads nothing from elsewhere and posts only to this server.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")


@dataclasses.dataclass(frozen=True)
class PageAsset:
    """A file of the page, ready to send."""

    body: bytes
    content_type: str


def page_asset(path: str, model_name: str) -> PageAsset | None:
    """The page file that `GET path` asks for, or None when the path is not one of them.

    Args:
        path: the request path, query string included (it is ignored).
        model_name: the served model's `<name>`, for the page's `:predict` URL.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    name = _ALIASES.get(path, path[1:] if path.startswith("/") else "")
    files = _page_files()
    if name not in files:
        return None
    body = files[name]
    if name == "index.html":
        body = _fill_in(body, model_name)
    return PageAsset(body, _CONTENT_TYPES[name[name.rindex("."):]])


@functools.cache
def _page_files() -> dict[str, bytes]:
    """The page's files by name: the package's `page/` folder, read once."""
    folder = resources.files("mmentail.serving").joinpath("page")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir()
            if entry.is_file() and any(entry.name.endswith(ext) for ext in _CONTENT_TYPES)}


def _fill_in(template: bytes, model_name: str) -> bytes:
    """`index.html` with the model's `:predict` and `:explain` URLs and the labels in the
    answer's order."""
    values = {"{{predict_url}}": f"v1/models/{model_name}:predict",
              "{{explain_url}}": f"v1/models/{model_name}:explain",
              "{{labels}}": json.dumps(list(LABELS))}
    text = template.decode("utf-8")
    for placeholder, value in values.items():
        text = text.replace(placeholder, html.escape(value, quote=True))
    return text.encode("utf-8")
