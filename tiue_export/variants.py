"""The variant table: every alternative file a bundle's graph can carry besides its exported one.

A variant is a row here as a graph is a row in :mod:`tiue_export.specs`: which graphs it
replaces, which engines can run it, which option picks it and how a user gets a bundle that has
it. ``export``, ``calibrate``, ``check``, ``bench``, ``infer`` and the runtime read this table; a
new variant (an fp16 IR, a LoRA-merged decoder ...) is a new row, not a new branch in each command.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import InputError
from .specs import GRAPHS

UNET_GRAPHS = ("unet_encoder", "unet_decoder", "unet_decoder_fused")


@dataclass(frozen=True)
class GraphVariant:
    """One row of the table.

    Attributes:
        name: the manifest's variant key (``int8``, ``tiny``).
        graphs: the graphs it replaces (the others keep their exported files).
        make: how a bundle gets it, ``{bundle}`` standing for the bundle's path.
        engines: the engines that run it (TensorRT builds its engines from the exported graphs).
        option: the run-time option that picks it: ``backend`` (a registry entry's variant) or
            ``vae`` (``--vae NAME``, composing with any backend's UNet graphs).
        source: for rows exported from a PyTorch module: the module that finds it for a model
            (``resolve(model, choice) -> path``), loads it (``load(path)``) and says where it
            came from (``provenance(path) -> dict``, recorded in the manifest).
    """

    name: str
    graphs: tuple[str, ...]
    make: str
    engines: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")
    option: str = "backend"
    source: str | None = None

    def resolve(self, model, choice: str):
        """The directory of this row's PyTorch module for ``model`` and a ``--vae`` ``choice``."""
        return importlib.import_module(self.source).resolve(model, choice)

    def load(self, path):
        return importlib.import_module(self.source).load(path)

    def provenance(self, path) -> dict:
        return importlib.import_module(self.source).provenance(path)

    def torch_decoder(self, model, choice: str):
        """The PyTorch module of this row for ``model`` and a ``--vae`` ``choice`` (a name or a directory)."""
        return self.load(self.resolve(model, choice))


VARIANTS: dict[str, GraphVariant] = {
    v.name: v
    for v in (
        GraphVariant("int8", UNET_GRAPHS, "run tiue-export calibrate {bundle}"),
        GraphVariant("openvino-int8", UNET_GRAPHS, "run tiue-export calibrate {bundle} --engine openvino", engines=("openvino",)),
        GraphVariant(
            "tiny", ("vae_decoder",), "re-export it with --vae tiny (a distill-vae decoder)",
            engines=("onnxruntime", "openvino"), option="vae", source="tiue_export.reference.tiny_vae",
        ),
    )
}
assert all(set(v.graphs) <= set(GRAPHS) for v in VARIANTS.values())

#: The decoder choices of ``--vae``: the exported decoder, or a row that replaces it.
VAE_CHOICES = ("full",) + tuple(n for n, v in VARIANTS.items() if v.option == "vae")


def reference_key(variant: str) -> str:
    """The key of a decoder row's PyTorch images of the export reference's z0, in reference.npz."""
    return f"vae_decoder.{variant}.images"


def how_to_make(variant: str, bundle: str = "BUNDLE") -> str:
    """The command that gives ``bundle`` the ``variant`` it lacks (a precision: export it so)."""
    row = VARIANTS.get(variant)
    return row.make.format(bundle=bundle) if row else f"export it with --precision {variant}"


def has_variant(manifest, variant: str) -> bool:
    """Whether every graph the ``variant`` row replaces has it in ``manifest``."""
    row = VARIANTS[variant]
    return all(variant in manifest.graphs[g].variants for g in row.graphs if g in manifest.graphs)


def decoder_choices(manifest, engine: str) -> list[str]:
    """The ``--vae`` choices a bundle offers on ``engine``: the exported decoder and each decoder
    row it carries that the engine runs."""
    return [v for v in VAE_CHOICES if v == "full" or (has_variant(manifest, v) and engine in VARIANTS[v].engines)]


def check_vae(vae: str, engine: str) -> None:
    """Refuse a ``--vae`` choice a bundle cannot run on ``engine`` (the bundle is not read)."""
    if vae not in VAE_CHOICES:
        raise InputError(f"--vae {vae}: a bundle takes {' or '.join(VAE_CHOICES)}")
    if vae != "full" and engine not in VARIANTS[vae].engines:
        runs = " and ".join(VARIANTS[vae].engines)
        raise InputError(f"--vae {vae} runs on {runs}: TensorRT's engines are built from the graphs as exported")


def with_vae(bundle, vae: str, engine: str):
    """``bundle`` decoding with the ``--vae`` row ``vae`` (refused, with its fix, when absent)."""
    check_vae(vae, engine)
    return bundle if vae == "full" else bundle.with_variant(vae)
