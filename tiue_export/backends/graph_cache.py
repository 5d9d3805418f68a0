"""The graph cache on disk: one folder per entry, named by a graph's key, capped in size.

An entry is written whole (in a staging folder, then renamed) and removed whole (renamed out of
the way, then deleted), so a reader in another process sees an entry complete or not at all. Each
use marks the entry (its folder's modification time); when the cache grows past its cap
(``TIUE_EXPORT_OV_CACHE_MAX``, default :data:`DEFAULT_MAX_BYTES`) the least recently used entries
go first, never one this process holds open. ``tiue-export cache`` lists and clears it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import OWNER, staging_dir

log = logging.getLogger("tiue_export")

#: 10 GB: the graphs of two SD-sized bundles (4.9 GB each in bf16: fp16 IR plus compiled graphs),
#: or one bundle's bf16 and int8 variants, which share their text encoder and VAE entries.
DEFAULT_MAX_BYTES = 10 * 1000**3

#: What an entry says about itself (the graph it came from), for ``tiue-export cache show``.
INFO = "entry.json"

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}

#: Entries this process has open, with how many holders each (pipelines share entries):
#: never evicted by it, whatever the cap.
_IN_USE: Counter[str] = Counter()


def cache_root() -> Path | None:
    """``$TIUE_EXPORT_CACHE/openvino`` (default ``~/.cache/tiue-export/openvino``); None when
    ``TIUE_EXPORT_OV_CACHE=0`` turns the cache off."""
    if os.environ.get("TIUE_EXPORT_OV_CACHE", "1") == "0":
        return None
    return Path(os.environ.get("TIUE_EXPORT_CACHE", Path.home() / ".cache" / "tiue-export")) / "openvino"


def parse_size(text: str, what: str = "size") -> int:
    """``"10GB"``, ``"500M"``, ``"2GiB"``, ``"123456"`` (bytes) as bytes; a one-line
    :class:`InputError` otherwise. K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise InputError(f"{what} {text!r}: give a number of bytes with an optional unit (500MB, 10GB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def max_bytes() -> int:
    """The cache's cap: ``TIUE_EXPORT_OV_CACHE_MAX`` (e.g. ``20GB``), default :data:`DEFAULT_MAX_BYTES`."""
    text = os.environ.get("TIUE_EXPORT_OV_CACHE_MAX")
    return DEFAULT_MAX_BYTES if text is None else parse_size(text, "TIUE_EXPORT_OV_CACHE_MAX")


def format_size(n: int) -> str:
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Entry:
    """One cache entry: its key (the folder's name), size on disk, last use and source graph."""

    key: str
    path: Path
    bytes: int
    last_used: float
    source: str


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # removed while we count
                pass
    return total


def entries(root: Path) -> list[Entry]:
    """The entries under ``root``, least recently used first (staging and removed folders, whose
    names start with a dot, are not entries)."""
    out = []
    try:
        folders = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return out
    for p in folders:
        try:
            used = p.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        try:
            info = json.loads((p / INFO).read_text())
        except (OSError, ValueError):
            info = {}
        out.append(Entry(p.name, p, _size(p), used, str(info.get("source", "?"))))
    return sorted(out, key=lambda e: e.last_used)


def entry_dir(root: Path, key: str, source: Path, write=None) -> Path:
    """The entry ``key`` under ``root``, made if missing: ``write(folder)`` fills a staging folder
    (nothing to fill: None), then it is renamed into place; marked as used either way.

    Every entry is renamed into place holding its info file, so a folder of that name without one
    is not an entry: the remains of a compile whose entry was evicted under it (OpenVINO makes its
    ``CACHE_DIR`` again). It is set aside and the entry made anew."""
    entry = Path(root) / key
    for attempt in (1, 2):
        if (entry / INFO).is_file():
            break
        if entry.is_dir():
            _set_aside(entry)
        tmp = staging_dir(entry, "entry")
        try:
            if write is not None:
                write(tmp)
            (tmp / INFO).write_text(json.dumps({"source": str(Path(source).resolve()), "created": time.time()}) + "\n")
            try:
                os.rename(tmp, entry)
            except OSError:  # another process finished the same entry first, or remains came back
                if attempt == 2 and not (entry / INFO).is_file():
                    raise
            else:  # the owner file goes only now: a staging folder killed before the rename is swept
                (entry / OWNER).unlink(missing_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _IN_USE[key] += 1
    touch(entry)
    return entry


def _set_aside(folder: Path) -> None:
    """Remove a folder that held no entry when looked at. Renamed away first, then judged: another
    process may have removed it and renamed a whole entry into its place meanwhile, which goes back."""
    gone = folder.with_name(f".removed-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, gone)
    except OSError:  # removed by another process already
        return
    if (gone / INFO).is_file():
        try:
            os.rename(gone, folder)
            return
        except OSError:  # a third made it meanwhile: this copy is one too many
            pass
    shutil.rmtree(gone, ignore_errors=True)


def touch(entry: Path) -> None:
    """Mark ``entry`` as just used (its folder's modification time): the last one evicted."""
    try:
        os.utime(entry)
    except OSError:  # evicted by another process meanwhile: the next load makes it again
        pass


def remove(entry: Path) -> bool:
    """Remove ``entry`` whole: renamed to a dot-name first (readers then miss it; two removers
    never collide), then deleted. False when it was already gone."""
    gone = entry.with_name(f".removed-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(entry, gone)
    except FileNotFoundError:
        return False
    except OSError as exc:  # a read-only or shared cache: the graph already loaded, so only warn
        log.warning("graph cache: cannot remove %s (%s); it stays", entry, exc)
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True


def discard(root: Path, key: str) -> bool:
    """Remove the entry ``key`` that failed to load (damaged: the next load makes it anew), unless
    another holder in this process still has it open. False when it stays or was gone."""
    if key in _IN_USE:
        return False
    return remove(Path(root) / key)


def evict(root: Path, limit: int, keep=frozenset()) -> list[Entry]:
    """Remove the least recently used entries under ``root`` until it holds at most ``limit``
    bytes; ``keep`` (keys) and the entries this process has open stay. Returns what went."""
    _sweep_removed(Path(root))
    held = entries(root)
    total = sum(e.bytes for e in held)
    removed = []
    for e in held:
        if total <= limit:
            break
        if e.key in keep or e.key in _IN_USE:
            continue
        if remove(e.path):
            removed.append(e)
        total -= e.bytes
    if removed:
        log.info(
            "graph cache %s over its cap of %s: removed %d least recently used entr%s (%s)",
            root, format_size(limit), len(removed), "y" if len(removed) == 1 else "ies", format_size(sum(e.bytes for e in removed)),
        )
    return removed


def forget(folder: Path, root: Path | None = None) -> list[Entry]:
    """Remove the entries (of ``root``; None: :func:`cache_root`) made from graphs inside
    ``folder``: a staging folder about to be deleted (calibrate's int8 graphs, measured before they
    are published) whose entries no load would ever meet again. Returns what went."""
    root = cache_root() if root is None else Path(root)
    if root is None:
        return []
    folder = Path(folder).resolve()
    gone = [e for e in entries(root) if e.key not in _IN_USE and Path(e.source).is_relative_to(folder)]
    return [e for e in gone if remove(e.path)]


def _sweep_removed(root: Path) -> None:
    """Finish the removals of killed processes (their renamed entries would otherwise stay)."""
    for p in root.glob(".removed-*"):
        pid = p.name.split("-")[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)


def release(key: str) -> None:
    """One holder of entry ``key`` closed it; with none left it may be evicted like any other."""
    if _IN_USE[key] > 1:
        _IN_USE[key] -= 1
    else:
        _IN_USE.pop(key, None)
