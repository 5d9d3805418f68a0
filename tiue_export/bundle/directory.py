"""Load, validate and save a bundle: its manifest checked against the JSON Schema and against
itself (K, S and E recomputed, shapes, wiring, file hashes) before anything runs.

A bundle that fails any check is refused with one line (:class:`~tiue_export.errors.ModelError`,
exit code 2) that names the field and what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..errors import ModelError
from ..files import atomic_path
from ..variants import how_to_make
from .manifest import CHAIN_INPUTS, CHAIN_OUTPUTS, EQ11, SCHEMA_VERSION, Manifest

MANIFEST = "manifest.json"
VALIDATION = "validation.json"
#: The PyTorch reference of export's validation run, for `check` without torch.
REFERENCE = "reference.npz"
SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"

#: How deep manifest.json may nest: a manifest nests 7 levels, and the JSON and schema readers
#: recurse per level. As kMaxJsonDepth in engines/include/tiue/manifest.hpp.
MAX_JSON_DEPTH = 64

#: S and E are float64 both when written and when recomputed here; this leaves room for another
#: language's libm, not for an edited value (one timestep moves E by ~1e-3).
COEFFICIENT_RTOL = 1e-9


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


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} overflows a float")
    return value


def _depth(data) -> int:
    """How many levels of objects and arrays ``data`` nests (iterative: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_manifest_json(mpath: Path):
    """``manifest.json`` as JSON defines it, as the C++ runtime reads it: NaN, Infinity and numbers
    past float64 are refused (Python's json takes them), as is nesting past MAX_JSON_DEPTH.

    Raises:
        ModelError: not JSON, or nested too deep (one line).
    """
    too_deep = f"{mpath}: JSON nested deeper than {MAX_JSON_DEPTH} levels: not a tiue-export manifest"
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ModelError(too_deep) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mpath}: not valid JSON ({exc}): re-export the bundle") from exc
    if _depth(data) > MAX_JSON_DEPTH:
        raise ModelError(too_deep)
    return data


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def check_schema(data: dict, where: str) -> None:
    """The shipped JSON Schema; the first violation becomes one line naming its place."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        place = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ModelError(f"{where}: {place}: {error.message[:200]}: re-export the bundle")


def check_semantics(m: Manifest, where: str) -> None:
    """What a schema cannot say: the sampler agrees with its schedule, shapes with each other,
    the wiring with the graphs, every graph file with its hash."""

    def bad(msg: str):
        raise ModelError(f"{where}: {msg}: re-export the bundle")

    check_sampler(m, bad)
    check_shapes(m, bad)
    for name, chain in m.chains.items():
        check_chain(m, name, chain, bad)
    check_files(m, bad)


def check_sampler(m: Manifest, bad) -> None:
    """The sampler's timesteps, DDIM plan and Eq. 11 coefficients follow from its schedule."""
    s = m.sampler
    n_train = s.schedule.num_train_timesteps
    if not (s.k == len(s.timesteps) == len(s.prev_timesteps) == len(s.E)):
        bad(f"sampler k={s.k} but {len(s.timesteps)} timesteps, {len(s.prev_timesteps)} prev_timesteps and {len(s.E)} E coefficients")
    if len(s.schedule.alphas_cumprod) != n_train:
        bad(f"the schedule has {len(s.schedule.alphas_cumprod)} alphas_cumprod for {n_train} training timesteps")
    for t in (*s.timesteps, s.encoder_timestep):
        if not 0 <= t < n_train:
            bad(f"timestep {t} is outside 0..{n_train - 1}")
    alphas = (*s.schedule.alphas_cumprod, s.final_alpha_cumprod)
    if not all(0.0 < a <= 1.0 for a in alphas):
        bad("the schedule's alphas_cumprod must lie in (0, 1]")
    from ..schedule import ddim_prev_timesteps, one_pass_coefficients

    if list(s.prev_timesteps) != ddim_prev_timesteps(s.timesteps, n_train):
        bad(f"prev_timesteps {list(s.prev_timesteps)} do not follow from timesteps {list(s.timesteps)}")
    S, E = one_pass_coefficients(s.schedule.alphas_cumprod, s.timesteps, s.prev_timesteps, s.final_alpha_cumprod)
    for name, want, got in [("S", S, s.S)] + [(f"E[{i}]", w, g) for i, (w, g) in enumerate(zip(E, s.E))]:
        if not math.isclose(got, want, rel_tol=COEFFICIENT_RTOL, abs_tol=0.0):
            bad(f"sampler {name} = {got!r}, but the schedule and timesteps give {want!r}")


def check_shapes(m: Manifest, bad) -> None:
    """The graphs' tensor shapes agree with the manifest's latent, image and token sizes."""
    g = m.graphs
    C, h, w = m.latent
    H, W = m.image
    L = m.tokenizer.model_max_length
    expect = {
        ("text_encoder", "input_ids"): ("B", L),
        ("unet_encoder", "latents"): ("B", C, h, w),
        ("vae_decoder", "latents"): ("B", C, h, w),
        ("vae_decoder", "images"): ("B", 3, H, W),
    }
    expect.update({("unet_encoder", f): ("B", *shape) for f, shape in m.features.items()})
    for (graph, tensor), shape in expect.items():
        if graph not in g:
            bad(f"no {graph} graph")
        try:
            got = tuple(g[graph].tensor(tensor).shape)
        except KeyError:
            bad(f"{graph} has no tensor {tensor}")
        if got != shape:
            bad(f"{graph}.{tensor} has shape {list(got)} but the manifest's sizes give {list(shape)}")
    if H % h or W % w or H // h != W // w:
        bad(f"image {H}x{W} is not a whole multiple of the latent {h}x{w}")
    if list(m.features) != g["unet_encoder"].output_names:
        bad(f"features {list(m.features)} are not the encoder's outputs {g['unet_encoder'].output_names}")


def check_files(m: Manifest, bad) -> None:
    """Every graph, variant and engine file is among the bundle's files, with the hash it records."""
    for gr in m.graphs.values():
        for label, file, digest in [(gr.name, gr.file, gr.sha256)] + [
            (f"{gr.name} variant {vn}", v.file, v.sha256) for vn, v in gr.variants.items()
        ]:
            if m.files.get(file) != digest:
                why = "is not among the bundle's files" if file not in m.files else "has another sha256 than the graph records"
                bad(f"{label}: file {file} {why}")
    for precision, entry in m.engines.items():
        for gname, e in (entry.get("graphs") or {}).items():
            if e.get("file") not in m.files:
                bad(f"{precision} engine of {gname}: {e.get('file')} is not among the bundle's files")


def check_chain(m: Manifest, name: str, chain, bad) -> None:
    """Every input of every graph has one source that exists earlier in the chain, same shape."""
    produced: dict[str, tuple] = {f"inputs.{n}": None for n in CHAIN_INPUTS}
    eq11_inputs = (f"{EQ11}.latents", f"{EQ11}.eps")

    def resolve(dest: str):
        src = chain.sources.get(dest)
        if src is None:
            bad(f"chain {name}: nothing feeds {dest}")
        if src == f"{EQ11}.z0" and src not in produced:
            for d in eq11_inputs:
                resolve(d)
            produced[src] = ("B", *m.latent)
        if src not in produced:
            bad(f"chain {name}: {dest} is fed by {src}, which no earlier graph of the chain produces")
        return produced[src]

    for graph in chain.graphs:
        if graph not in m.graphs:
            bad(f"chain {name} runs graph {graph!r}, which the manifest lacks")
        gr = m.graphs[graph]
        for t in gr.inputs:
            shape = resolve(f"{graph}.{t.name}")
            if shape is not None and tuple(shape) != tuple(t.shape):
                bad(f"chain {name}: {graph}.{t.name} {list(t.shape)} is fed a tensor of shape {list(shape)}")
        for t in gr.outputs:
            produced[f"{graph}.{t.name}"] = tuple(t.shape)
    for out in CHAIN_OUTPUTS:
        resolve(f"outputs.{out}")


def check_runtime_lists(data: dict, where: str) -> None:
    """``runtime.fused`` and ``runtime.unfused`` (what runtimes that predate chains read) are the
    graph lists of the chains of those names."""
    runtime = data["runtime"]
    for name in ("fused", "unfused"):
        if runtime[name] != runtime["chains"][name]["graphs"]:
            raise ModelError(f"{where}: runtime.{name} {runtime[name]} is not the graphs of chain {name} {runtime['chains'][name]['graphs']}: re-export the bundle")


@dataclass(frozen=True)
class Bundle:
    """An exported bundle: its directory and its typed, validated manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path, verify: bool = True) -> "Bundle":
        """Read, schema-check and semantically check ``manifest.json``; with ``verify``, also
        hash every file it lists.

        Raises:
            ModelError: not a bundle, another schema version, a contradiction, a missing or
                altered file (one line; exit code 2 in the CLI).
        """
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise ModelError(f"no such bundle directory: {path}")
        if not mpath.is_file():
            raise ModelError(f"{path} is not an exported bundle (no {MANIFEST}): run tiue-export export first")
        data = read_manifest_json(mpath)
        if not isinstance(data, dict) or not isinstance(data.get("schema_version"), int):
            raise ModelError(f"{mpath}: no schema_version: not a tiue-export manifest")
        version = data["schema_version"]
        if version > SCHEMA_VERSION:
            raise ModelError(f"{mpath}: manifest schema_version {version} is newer than this tiue-export reads ({SCHEMA_VERSION}): upgrade tiue-export")
        if version < SCHEMA_VERSION:
            raise ModelError(f"{mpath}: manifest schema_version {version} is older than this tiue-export reads ({SCHEMA_VERSION}): re-export the bundle")
        check_schema(data, str(mpath))
        manifest = Manifest.from_dict(data)
        check_semantics(manifest, str(mpath))
        check_runtime_lists(data, str(mpath))
        bundle = cls(path, manifest)
        bundle.verify(hashes=verify)
        return bundle

    def verify(self, hashes: bool = True) -> None:
        """Every file the manifest lists is present (and, with ``hashes``, has its sha256)."""
        for rel, digest in self.manifest.files.items():
            f = self.path / rel
            if not f.is_file():
                raise ModelError(f"bundle {self.path}: {rel} is missing: re-export the bundle")
            if hashes and sha256_file(f) != digest:
                raise ModelError(f"bundle {self.path}: {rel} was altered (sha256 mismatch): re-export the bundle")

    # -- views ------------------------------------------------------------------------------------
    def with_variant(self, variant: str | None) -> "Bundle":
        """This bundle with each graph's ``variant`` (``int8``: the Q/DQ graphs of ``tiue-export
        calibrate``) in place of its exported file; graphs without one keep theirs."""
        if variant is None or variant == self.manifest.precision:
            return self
        if variant not in self.manifest.variants:
            fix = how_to_make(variant, str(self.path))
            raise ModelError(f"bundle {self.path} has no {variant} graphs (it is {self.manifest.precision}): {fix}")
        return replace(self, manifest=self.manifest.with_variant(variant))

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file

    def spec(self, name: str):
        return self.manifest.graphs[name].spec

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.manifest.latent


def save_manifest(root, manifest: Manifest) -> Manifest:
    """Write ``manifest.json`` into ``root`` with every file's sha256 recomputed, atomically and
    last (readers see the old manifest or the new one); the result is validated first."""
    root = Path(root)
    manifest = manifest.replace(files=bundle_files(root))
    data = manifest.to_dict()
    check_schema(data, f"{root / MANIFEST} (about to be written)")
    check_semantics(manifest, f"{root / MANIFEST} (about to be written)")
    with atomic_path(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return manifest


def publish(root, staged: dict, manifest: Manifest) -> Manifest:
    """Move ``staged`` files (``{relative path: temporary path}``, on the same file system) into
    the bundle at ``root``, then rewrite the manifest last (:func:`save_manifest`)."""
    import os

    root = Path(root)
    for rel, tmp in staged.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    return save_manifest(root, manifest)
