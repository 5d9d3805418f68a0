"""The playground page of ``tiue-export serve`` (``GET /``): static files shipped in the package.

Plain HTML, CSS and JavaScript, no build step and nothing fetched from elsewhere: the page works
offline and calls only its own server (``GET /v1/model``, ``POST /v1/images/generations``).
"""

from __future__ import annotations

from importlib import resources

#: where the page's own files are served from
PREFIX = "/playground/"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def asset(path: str) -> tuple[bytes, str] | None:
    """The bytes and media type of the file at URL ``path`` (``/``: the page), None if there is none.

    Only files shipped beside this module are served: a name is looked up among them, never
    joined onto a directory, so no path can reach anything else.
    """
    name = "index.html" if path.rstrip("/") == "" else path[len(PREFIX) :] if path.startswith(PREFIX) else None
    files = {f.name: f for f in resources.files(__package__).iterdir() if f.is_file() and f.name.endswith(tuple(MEDIA_TYPES))}
    if name not in files:
        return None
    return files[name].read_bytes(), MEDIA_TYPES[name[name.rindex(".") :]]
