"""Atomic file writes and PNG output with metadata."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("tiue_export")


#: The file in a staging directory that names its writer (host, pid, process start time).
OWNER = ".tiue-owner.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _writer_gone(owner: dict) -> bool:
    """True when ``owner`` ran on this host and its process no longer runs (or its pid was reused)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False  # another machine's writer (a shared file system): not ours to judge
    start = _process_start(owner["pid"])
    return start is None or (owner.get("start") is not None and start != owner["start"])


#: Directories this process has swept (:func:`staging_dir` sweeps each once, not at every write).
_SWEPT: set[Path] = set()


def staging_dir(target: str | os.PathLike, kind: str = "") -> Path:
    """A new hidden directory beside ``target`` (``.NAME.KIND-XXXX.tmp``) that names its writer,
    so that :func:`sweep_stale` can remove it once the writer is gone. The first staging directory
    a process makes in a directory removes the stale ones there first (one listing per directory,
    not one per file written)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    parent = target.parent.resolve()
    if parent not in _SWEPT:
        _sweep(parent, ".*.tmp", target.parent)
        _SWEPT.add(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind + '-' if kind else ''}", suffix=".tmp", dir=target.parent))
    (tmp / OWNER).write_text(json.dumps(_owner()))
    return tmp


def sweep_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the staging directories of ``target`` left by a writer that was killed (SIGKILL, a
    power cut): only ours (they hold :data:`OWNER`), only when their writer's process is gone."""
    target = Path(target)
    return _sweep(target.parent, f".{glob.escape(target.name)}.*.tmp", target)


def _sweep(parent: Path, pattern: str, beside) -> list[Path]:
    removed = []
    try:
        candidates = list(parent.glob(pattern))
    except OSError:
        return removed
    for d in candidates:
        try:
            owner = json.loads((d / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and _writer_gone(owner):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d staging director%s of killed writers beside %s", len(removed), "y" if len(removed) == 1 else "ies", beside)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it.

    Works for files and directories (a directory target is replaced whole). The temporary path
    lies in a :func:`staging_dir`, so a killed writer's leftovers go at a later process's first
    write into the same directory.
    """
    path = Path(path)
    tmp = staging_dir(path) / (path.name + suffix)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path``, or a one-line :class:`InputError` when it is missing, a directory, or there but
    not readable (a file this user may not read is not "no such file")."""
    from .errors import InputError

    path = Path(path)
    try:
        is_dir = path.is_dir()
        path.stat()
    except FileNotFoundError:
        raise InputError(f"no such {what}: {path}") from None
    except OSError as exc:  # a parent directory this user may not enter, a name too long ...
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if is_dir:
        raise InputError(f"{what} {path} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {what} {path}: permission denied")
    return path


def writable_dir(path: str | os.PathLike, what: str = "--out", shown: str | os.PathLike | None = None) -> Path:
    """Check, before any work, that the directory ``path`` can be written or created: its nearest
    existing ancestor is a directory that takes a new file (the one probe that tells the truth
    for root, read-only mounts and quotas). Creates nothing; a one-line :class:`InputError` otherwise,
    naming ``shown`` (what the user gave, when ``path`` is its directory) or ``path``."""
    from .errors import InputError

    path = Path(path)
    base = path.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    shown = path if shown is None else shown
    if not base.is_dir():
        raise InputError(f"{what} {shown}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tiue-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{what} {shown}: cannot write into {base} ({exc.strerror})") from exc
    return path


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (atomically, beside itself):
    not a directory, and its directory writable or creatable (:func:`writable_dir`). Creates
    nothing; a one-line :class:`InputError` otherwise."""
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory: give a file name")
    writable_dir(path.absolute().parent, what, shown=path)
    return path


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's contents; a one-line :class:`InputError` when it is missing, a
    directory, unreadable or not UTF-8."""
    from .errors import InputError

    path = require_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{what} {path} is not UTF-8 text (line {line}, byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def png_bytes(image, metadata: dict[str, str] | None = None) -> bytes:
    """An HWC uint8 image as PNG bytes with text metadata (what :func:`write_png` writes)."""
    from io import BytesIO

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, str(value))
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image, metadata: dict[str, str] | None = None) -> Path:
    """Write an HWC uint8 image as PNG with text metadata, atomically."""
    data = png_bytes(image, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sha256_of_weights(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a model component's weight files (sorted by name, concatenated): names the
    weights a derived model (a student, a tiny decoder) was made from."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt"))
    for p in files:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
