"""``tiue.json``: the optional student description beside a diffusers pipeline directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError

TIUE_JSON = "tiue.json"
#: CFG scale for models whose tiue.json does not give one (diffusers' StableDiffusionPipeline default).
DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True)
class StudentConfig:
    """K, timesteps and provenance of a TiUE student; absent file means K=4, scheduler timesteps."""

    k: int = 4  # the paper's K: four decoder timesteps share one encoder pass
    timesteps: tuple[int, ...] | None = None  # None: what the scheduler gives for set_timesteps(k)
    encoder_timestep: int | None = None  # None: the first decoder timestep, as the authors do
    kind: str = "tiue"  # "tiue" (one-pass student) or "teacher" (sampled with ddim:N by default)
    provenance: dict = field(default_factory=dict)

    @classmethod
    def read(cls, model_dir: Path) -> "StudentConfig | None":
        path = Path(model_dir) / TIUE_JSON
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            cfg = cls(
                k=int(data.get("k", 4)),
                timesteps=tuple(int(t) for t in data["timesteps"]) if data.get("timesteps") else None,
                encoder_timestep=(int(data["encoder_timestep"]) if data.get("encoder_timestep") is not None else None),
                kind=str(data.get("kind", "tiue")),
                provenance=dict(data.get("provenance", {})),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"{path}: not a valid tiue.json ({exc})") from exc
        if cfg.timesteps is not None and len(cfg.timesteps) != cfg.k:
            raise ModelError(f"{path}: k={cfg.k} but {len(cfg.timesteps)} timesteps are listed")
        if cfg.kind not in ("tiue", "teacher"):
            raise ModelError(f"{path}: kind must be 'tiue' or 'teacher', got {cfg.kind!r}")
        return cfg

    @property
    def guidance(self) -> float:
        """The CFG scale the model was made for (provenance ``guidance``), else :data:`DEFAULT_GUIDANCE`."""
        value = self.provenance.get("guidance", self.provenance.get("default_guidance"))
        return float(value) if value is not None else DEFAULT_GUIDANCE

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "timesteps": list(self.timesteps) if self.timesteps else None,
            "encoder_timestep": self.encoder_timestep,
            "kind": self.kind,
            "provenance": self.provenance,
        }
