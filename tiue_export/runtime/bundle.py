"""Reading a bundle: the manifest (the contract), its schema version and every file's sha256.

Torch-free; the exporter imports :data:`SCHEMA_VERSION`, :data:`MANIFEST` and :func:`sha256_file`
from here so that writer and reader cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..specs import GRAPHS, GraphSpec

#: Bumped when a reader of the previous version would misread a new manifest.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
VALIDATION = "validation.json"


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (bundles hold multi-GB external data)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_files(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` except the manifest itself."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


@dataclass(frozen=True)
class Bundle:
    """An exported bundle directory and its parsed manifest."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path, verify: bool = True) -> "Bundle":
        """Read ``manifest.json``; with ``verify``, check every listed file's sha256.

        Raises:
            ModelError: not a bundle, a newer schema, a missing or altered file.
        """
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise ModelError(f"no such bundle directory: {path}")
        if not mpath.is_file():
            raise ModelError(f"{path} is not an exported bundle (no {MANIFEST}): run tiue-export export first")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"{mpath}: not valid JSON ({exc}): re-export the bundle") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
            raise ModelError(f"{mpath}: no schema_version: not a tiue-export manifest")
        version = manifest["schema_version"]
        if version > SCHEMA_VERSION:
            raise ModelError(
                f"{mpath}: manifest schema_version {version} is newer than this tiue-export reads "
                f"({SCHEMA_VERSION}): upgrade tiue-export"
            )
        missing = [k for k in ("graphs", "files", "sampler", "tokenizer", "latent") if k not in manifest]
        if missing or any(g not in manifest["graphs"] for g in GRAPHS):
            raise ModelError(f"{mpath}: incomplete manifest (missing {missing or 'graphs'}): re-export the bundle")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check that every file the manifest lists is present with its recorded sha256."""
        for rel, digest in self.manifest["files"].items():
            f = self.path / rel
            if not f.is_file():
                raise ModelError(f"bundle {self.path}: {rel} is missing: re-export the bundle")
            if sha256_file(f) != digest:
                raise ModelError(f"bundle {self.path}: {rel} was altered (sha256 mismatch): re-export the bundle")

    def spec(self, name: str) -> GraphSpec:
        return GraphSpec.from_manifest(name, self.manifest["graphs"][name])

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest["graphs"][name]["file"]

    def with_precision(self, precision: str | None) -> "Bundle":
        """This bundle with each graph's ``precision`` variant (the ``int8`` Q/DQ graphs that
        ``tiue-export calibrate`` writes) in place of its exported file; graphs without one keep
        theirs (the text encoder and VAE stay fp32). ``None`` or the bundle's own precision: as is."""
        base = self.manifest.get("precision", "fp32")
        if precision is None or precision == base:
            return self
        graphs = self.manifest["graphs"]
        swapped = {n: {**g, **g["variants"][precision]} for n, g in graphs.items() if precision in g.get("variants", {})}
        if not swapped:
            fix = (
                f"run tiue-export calibrate {self.path}"
                if precision == "int8"
                else f"export it with --precision {precision}"
            )
            raise ModelError(f"bundle {self.path} has no {precision} graphs (it is {base}): {fix}")
        return Bundle(self.path, {**self.manifest, "precision": precision, "graphs": {**graphs, **swapped}})

    @property
    def k(self) -> int:
        return int(self.manifest["sampler"]["k"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        lat = self.manifest["latent"]
        return (int(lat["channels"]), int(lat["height"]), int(lat["width"]))


def publish(root, staged: dict, manifest: dict) -> dict:
    """Move ``staged`` files (``{relative path: temporary path}``, on the same file system) into
    the bundle at ``root``, then rewrite ``manifest.json`` with every file's sha256, atomically and
    last: a reader sees the old manifest or the new one, never a half-written one."""
    import os

    root = Path(root)
    for rel, tmp in staged.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    manifest = {**manifest, "files": bundle_files(root)}
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    return manifest
