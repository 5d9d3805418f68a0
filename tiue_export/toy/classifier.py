"""The toy domain's attribute classifier: the measuring instrument of ``tiue-export toy eval``.

A small CNN with one softmax head per attribute (shape, colour, size, background). Its
penultimate layer is the feature space of the Frechet distance and PRDC, as Inception's pool
layer is for FID. It is trained on real renders of *every* attribute combination, held-out
ones included: it measures the generator and must not be the thing that fails to generalise.

Shipped in ``tiue_export/assets/toy-classifier/`` (``model.safetensors`` + ``config.json``);
rebuild it with :func:`train_classifier`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError, ModelError
from ..files import atomic_path
from . import domain

log = logging.getLogger("tiue_export")

DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "assets" / "toy-classifier"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def domain_classes() -> dict[str, list[str]]:
    """Class names per attribute head, in the domain's order (the heads' output order)."""
    values = {"shape": domain.SHAPES, "color": tuple(domain.COLORS), "size": domain.SIZES, "background": domain.BACKGROUNDS}
    return {name: list(values[name]) for name in domain.ATTRIBUTES}


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the classifier; written to ``config.json`` beside the weights."""

    classes: dict = field(default_factory=domain_classes)
    resolution: int = 64  # the domain's default render size; other sizes are resized to it
    # A patchify stem (kernel = stride = ``stem``) keeps full-resolution detail in channels at a
    # quarter of the positions: small shapes are ~8 px wide, and 2 shared CPU cores must train it.
    stem: int = 2
    stem_width: int = 16
    widths: tuple[int, ...] = (16, 32, 64)  # conv3x3 + BN + ReLU + 2x2 max-pool per stage: 32 -> 4 px
    feature_dim: int = 64  # small so a Gaussian fit on ~100 images is not hopelessly rank deficient

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        return cls(
            classes={k: list(v) for k, v in d["classes"].items()},
            resolution=int(d["resolution"]),
            stem=int(d["stem"]),
            stem_width=int(d["stem_width"]),
            widths=tuple(int(w) for w in d["widths"]),
            feature_dim=int(d["feature_dim"]),
        )


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train_classifier` trains; the resolved config is saved in ``config.json``."""

    steps: int = 1500  # accuracy saturates well before (docs/toy.md)
    batch_size: int = 64
    lr: float = 3e-3  # AdamW with a one-cycle schedule: fast and stable for a BN CNN this small
    weight_decay: float = 1e-4
    pool_size: int = 16384  # renders drawn once (~30 s); each step re-augments a batch of them
    seed: int = 0
    eval_images: int = 1000  # fresh renders per split, for the accuracy stored with the weights
    eval_seed: int = 10_000  # different from ``seed``: the check uses images never trained on


class AttributeNet(nn.Module):
    """CNN trunk -> ``feature_dim`` ReLU features -> one linear head per attribute."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        cin = config.stem_width
        layers = [nn.Conv2d(3, cin, config.stem, stride=config.stem, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        for w in config.widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = w
        self.trunk = nn.Sequential(*layers)
        # Global average + max pooling: shape detectors work wherever the object is (max), and the
        # average of a colour channel measures the object's area (size).
        self.embed = nn.Sequential(nn.Linear(2 * cin, config.feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(c)) for name, c in config.classes.items()})

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> (logits per attribute, penultimate features)."""
        h = self.trunk(x)
        feats = self.embed(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))
        return {name: head(feats) for name, head in self.heads.items()}, feats


def resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 NHWC images resized to ``resolution`` square with Pillow (antialiased bicubic)."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1:3] == (resolution, resolution):
        return images
    size = (resolution, resolution)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BICUBIC)) for im in images])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class Predictions:
    """Class indices per attribute (N,) and penultimate features (N, feature_dim)."""

    labels: dict[str, np.ndarray]
    features: np.ndarray

    def attributes(self, classes: dict[str, list[str]], i: int) -> dict[str, str]:
        return {name: classes[name][int(v[i])] for name, v in self.labels.items()}


class ToyClassifier:
    """A loaded classifier: ``predict(images)`` on uint8 NHWC images of any size."""

    def __init__(self, net: AttributeNet, path: Path | None = None, meta: dict | None = None):
        self.net = net.eval()
        self.path = path
        self.meta = meta or {}

    @property
    def config(self) -> ClassifierConfig:
        return self.net.config

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> Predictions:
        images = resize_images(images, self.config.resolution)
        labels: dict[str, list] = {name: [] for name in self.config.classes}
        feats = []
        for start in range(0, len(images), batch_size):
            logits, f = self.net(to_tensor(images[start : start + batch_size]))
            for name, v in logits.items():
                labels[name].append(v.argmax(1).numpy())
            feats.append(f.numpy())
        dim = self.config.feature_dim
        return Predictions(
            {n: np.concatenate(v) if v else np.zeros(0, np.int64) for n, v in labels.items()},
            np.concatenate(feats).astype(np.float64) if feats else np.zeros((0, dim)),
        )

    def targets(self, attrs: Sequence[domain.Attributes]) -> dict[str, np.ndarray]:
        """Class indices (N,) per attribute for a list of domain attributes."""
        return {
            name: np.array([c.index(getattr(a, name)) for a in attrs], dtype=np.int64)
            for name, c in self.config.classes.items()
        }

    def accuracy(self, images: np.ndarray, attrs: Sequence[domain.Attributes]) -> dict:
        """Share of images with every attribute right ("all") and per attribute; see :func:`score`."""
        return score(self.predict(images).labels, self.targets(attrs))


def score(labels: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict:
    """{"all": share with every attribute right, "per_attribute": {name: share right}}."""
    right = {name: labels[name] == targets[name] for name in targets}
    every = np.logical_and.reduce(list(right.values())) if right else np.zeros(0, bool)
    return {
        "all": float(every.mean()) if every.size else float("nan"),
        "per_attribute": {name: float(r.mean()) if r.size else float("nan") for name, r in right.items()},
    }


def load_classifier(path: str | Path | None = None) -> ToyClassifier:
    """Load a classifier directory (``model.safetensors`` + ``config.json``); default: the shipped one."""
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_CLASSIFIER
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise ModelError(f"{path}: not a toy classifier directory (no {name})")
    try:
        meta = json.loads((path / CONFIG).read_text())
        config = ClassifierConfig.from_dict(meta["model"])
        net = AttributeNet(config)
        net.load_state_dict(load_file(str(path / WEIGHTS)))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load the toy classifier: {reason}") from exc
    if config.classes != domain_classes():
        raise ModelError(f"{path}: classifier classes {config.classes} do not match the toy domain's {domain_classes()}")
    return ToyClassifier(net, path, meta)


# -- training -------------------------------------------------------------------------------------
def all_combos() -> list[domain.Attributes]:
    """Every attribute combination of both splits: the instrument may see held-out combos."""
    return domain.combos("train") + domain.combos("heldout")


def render_pool(n: int, seed: int, pool: Sequence[domain.Attributes], resolution: int) -> tuple[np.ndarray, list]:
    """``n`` renders of combinations drawn uniformly from ``pool``."""
    rng = np.random.default_rng(seed)
    attrs = [pool[i] for i in rng.integers(0, len(pool), n)]
    return np.stack([domain.render(a, rng, resolution) for a in attrs]), attrs


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-preserving noise a generator adds: mirror, blur (VAE softness), pixel noise, a small tint.

    Mirroring keeps every attribute (shapes are mirror-symmetric up to the rotation the domain
    already draws); blur, noise and +-0.05 offsets stay far inside the domain's colour margins.
    """
    b = x.shape[0]

    def u(*shape):
        return torch.rand(*shape, generator=g)

    flip = u(b) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    mix = u(b, 1, 1, 1) * (u(b, 1, 1, 1) < 0.5)
    x = x + mix * (blurred - x)
    x = x + torch.randn(x.shape, generator=g) * (u(b, 1, 1, 1) * 0.06)
    x = x + (u(b, 3, 1, 1) - 0.5) * 0.1
    return x.clamp(-1.0, 1.0)


def evaluate_real(classifier: ToyClassifier, n: int, seed: int) -> dict:
    """Accuracy on ``n`` fresh renders per split: {"train": {...}, "heldout": {...}}."""
    res = classifier.config.resolution
    out = {}
    for i, split in enumerate(("train", "heldout")):
        images, attrs = render_pool(n, seed + i, domain.combos(split), res)
        out[split] = classifier.accuracy(images, attrs)
    return out


def fit(net: AttributeNet, x_all: torch.Tensor, y_all: dict[str, torch.Tensor], cfg: TrainConfig, g: torch.Generator) -> float:
    """``cfg.steps`` AdamW steps (one-cycle schedule) on augmented batches drawn with ``g``; returns the seconds."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    net.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        logits, _ = net(augment(x_all[idx], g))
        loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("step %d/%d loss %.4f (%.0f s)", step + 1, cfg.steps, loss.item(), time.perf_counter() - t0)
    return time.perf_counter() - t0


def train_classifier(out_dir: str | Path, steps: int | None = None, seed: int | None = None, config: TrainConfig | None = None) -> dict:
    """Train the classifier on renders of every combination; save weights + config atomically.

    Args:
        out_dir: directory to write ``model.safetensors`` and ``config.json`` into (replaced whole).
        steps, seed: override :class:`TrainConfig` fields.
    Returns:
        The ``config.json`` contents, including the accuracy on fresh renders per split.
    """
    from dataclasses import replace

    from safetensors.torch import save_file

    from .. import __version__

    cfg = config or TrainConfig()
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    if cfg.steps < 1:
        raise InputError(f"steps must be >= 1, got {cfg.steps}")
    model_cfg = ClassifierConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, attrs = render_pool(cfg.pool_size, cfg.seed, all_combos(), model_cfg.resolution)
    x_all = to_tensor(images)
    net = AttributeNet(model_cfg)
    clf = ToyClassifier(net)
    y_all = {k: torch.from_numpy(v) for k, v in clf.targets(attrs).items()}
    log.info("rendered %d training images in %.1f s", len(images), time.perf_counter() - t0)
    train_seconds = fit(net, x_all, y_all, cfg, g)
    net.eval()
    accuracy = evaluate_real(clf, cfg.eval_images, cfg.eval_seed)
    meta = {
        "model": model_cfg.to_dict(),
        "train": asdict(cfg),
        "train_seconds": round(train_seconds, 1),
        # Every image's four attributes right, on fresh renders (eval_seed) of each split's combos.
        "accuracy": accuracy,
        "software": f"tiue-export {__version__}, torch {torch.__version__}",
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
