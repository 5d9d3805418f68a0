"""The distillation recipe as one frozen dataclass: every number of the authors' training script.

Defaults follow ``train_loopfree.sh`` of the Loopfree authors (SD 2.1-base, 8 GPUs), which builds
on SwiftBrush: VSD against a CFG teacher and a LoRA teacher, plus a KL term on the noise
predictions. The resolved config is written beside every checkpoint and into ``tiue.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import InputError

#: Ablation baselines: ``one-step-vsd`` is a plain SwiftBrush-style one-step student.
BASELINES = ("one-step-vsd",)
MIXED_PRECISION = ("no", "fp16", "bf16")
#: Student learning-rate schedules (diffusers.optimization names); the authors' is constant.
LR_SCHEDULES = ("constant", "cosine", "linear")
#: Fields that may change between a run and its resume (they do not change the maths).
RESUMABLE_CHANGES = ("steps", "epochs", "checkpoint_every", "keep_checkpoints", "log_tensorboard", "out", "run_dir", "pairs")
#: DDIM steps of the teacher for each pair unless a store says otherwise: what `infer --sampler ddim:50` draws.
DEFAULT_REGRESSION_STEPS = 50


@dataclass(frozen=True)
class DistillConfig:
    """Everything ``tiue-export distill`` needs; see ``docs/distill.md``."""

    prompts: str  # training prompts file (.txt, .jsonl, .csv, .parquet)
    out: str  # the student directory written at the end (a diffusers pipeline + tiue.json)
    teacher: str | None = None  # None: the built-in teacher (tiue_export/assets/toy-teacher)
    run_dir: str | None = None  # checkpoints, log, config; None: "<out>.run" beside the student

    # -- student -------------------------------------------------------------------------------
    k: int = 4  # the paper's K: four decoder timesteps from DDIMScheduler.set_timesteps(4)
    baseline: str | None = None  # "one-step-vsd": SwiftBrush one-step student (K=1 at t=999)
    resolution: int | None = None  # image side; None: the teacher UNet's sample_size x VAE factor

    # -- length --------------------------------------------------------------------------------
    steps: int | None = None  # total optimisation steps; None: epochs x steps per epoch
    epochs: int = 3  # train_loopfree.sh: --num_train_epochs 3
    batch_size: int = 8  # per device, as train_loopfree.sh (8 GPUs x 8 = 64 prompts a step)

    # -- student optimiser (Adam, not AdamW; the authors' lr is constant, with no warm-up) -----
    lr: float = 1e-6  # train_loopfree.sh --learning_rate 1.e-06: the student starts at the teacher
    adam_beta1: float = 0.9  # torch/diffusers defaults, kept by the authors
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # plain Adam: no decay of the teacher's weights
    max_grad_norm: float = 1.0  # both networks' gradients are clipped to this norm
    ema_decay: float = 0.9999  # diffusers EMAModel default (with its (1+n)/(10+n) warm-up)
    lr_schedule: str = "constant"  # the authors'; cosine/linear decay the lr to 0 at the last step (steadier checkpoints on the toy)
    lr_warmup_steps: int = 0  # linear warm-up of the student lr over the first steps

    # -- VSD (SwiftBrush) ----------------------------------------------------------------------
    guidance: float = 4.5  # CFG of both teachers in the score: train_loopfree.sh --guidance_scale 4.5
    vsd_t_min: int = 20  # t ~ U{20..980}: randint(0.02 * 1000, 0.981 * 1000) in the reference
    vsd_t_max: int = 980  # inclusive
    lambda_vsd: float = 1.0  # weight of the VSD loss; 0: no VSD, no teacher calls, no LoRA teacher (regression + KL only)
    lambda_kl: float = 0.1  # weight of the KL of the noise predictions to N(0, 1) (--lambda_kl)

    # -- teacher-pair regression (DMD's L_reg): off in the authors' recipe; the shipped toy student
    # uses 512 pairs, the one change that lifted the toy's accuracy plateau (docs/distill.md)
    regression_pairs: int = 0  # teacher DDIM (noise, latent) pairs drawn before training; 0: off
    lambda_reg: float = 1.0  # weight of the latent MSE between the student's z0 and the teacher's (0.5-4: level on the toy)
    regression_steps: int | None = None  # DDIM steps of the teacher for each pair; None: the store's, else DEFAULT_REGRESSION_STEPS
    regression_guidance: float | None = None  # CFG of the pairs; None: the store's, else the teacher's own (its tiue.json), as infer uses it
    pair_batch: int | None = None  # pairs per teacher call when drawing them; None: the store's, else pairs.DEFAULT_BATCH
    pairs: str | None = None  # a pair store (tiue-export distill-pairs) shared by runs; None: RUN/pairs

    # -- CLIP term (the authors' released students; off in their published script's defaults) --
    clip_model: str | None = None  # a local transformers CLIPModel directory (with its tokenizer); None: no CLIP term
    lambda_clip: float = 0.1  # the term's weight at step 0, decaying linearly to 0 over one epoch's steps, as the authors'
    clip_tau: float = 0.35  # relu(tau - cos(text, image)): the authors' --lambda_textcliploss 0.35

    # -- LoRA teacher --------------------------------------------------------------------------
    lr_lora: float = 1e-3  # train_loopfree.sh --learning_rate_lora 1.e-03: it must track the student
    lora_rank: int = 64  # --lora_rank 64
    lora_alpha: float = 108  # --lora_alpha 108 (scale 108/64 = 1.6875)
    lora_targets: tuple[str, ...] = ("to_q", "to_v")  # every attention's query and value projections
    lora_uncond_prob: float = 0.1  # the whole batch uses the empty prompt with this probability

    # -- engineering ---------------------------------------------------------------------------
    mixed_precision: str = "no"  # the authors use fp16 on GPUs; on CPU full precision is best
    gradient_checkpointing: bool = False  # the authors enable it for SD 2.1 at 512 px
    checkpoint_every: int = 500  # steps between resumable checkpoints (and always at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted (0: keep all)
    seed: int = 0  # model init, noise, timesteps and data order all follow from it
    log_tensorboard: bool = False  # also log to TensorBoard (needs `pip install tensorboard`)

    def __post_init__(self):
        checks = [
            (self.k >= 1, f"--k must be >= 1, got {self.k}"),
            (self.baseline in (None,) + BASELINES, f"unknown --baseline {self.baseline!r}: use {', '.join(BASELINES)}"),
            (self.baseline is None or self.k == 1, "the one-step-vsd baseline is a K=1 student"),
            (self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and self.lr_lora > 0, "learning rates must be > 0"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.lr_warmup_steps >= 0, f"--lr-warmup-steps must be >= 0, got {self.lr_warmup_steps}"),
            (0 <= self.vsd_t_min <= self.vsd_t_max, f"need 0 <= --vsd-t-min <= --vsd-t-max, got {self.vsd_t_min}, {self.vsd_t_max}"),
            (self.lambda_vsd >= 0, f"--lambda-vsd must be >= 0, got {self.lambda_vsd}"),
            (self.lambda_vsd > 0 or (self.regression_pairs > 0 and self.lambda_reg > 0),
             "--lambda-vsd 0 leaves nothing to learn from: add --regression-pairs N (and --lambda-reg > 0)"),
            (self.lambda_kl >= 0, f"--lambda-kl must be >= 0, got {self.lambda_kl}"),
            (self.lambda_clip >= 0, f"--lambda-clip must be >= 0, got {self.lambda_clip}"),
            (-1 <= self.clip_tau <= 1, f"--clip-tau must be in [-1, 1] (a cosine), got {self.clip_tau}"),
            (self.regression_pairs >= 0, f"--regression-pairs must be >= 0, got {self.regression_pairs}"),
            (self.lambda_reg >= 0, f"--lambda-reg must be >= 0, got {self.lambda_reg}"),
            (self.regression_steps is None or self.regression_steps >= 1, f"--regression-steps must be >= 1, got {self.regression_steps}"),
            (self.pair_batch is None or self.pair_batch >= 1, f"--pair-batch must be >= 1, got {self.pair_batch}"),
            (self.pairs is None or self.regression_pairs > 0, "--pairs needs --regression-pairs N (how many of the store's pairs to train on)"),
            (self.lora_rank >= 1, f"--lora-rank must be >= 1, got {self.lora_rank}"),
            (0 <= self.lora_uncond_prob <= 1, f"--lora-uncond-prob must be in [0, 1], got {self.lora_uncond_prob}"),
            (0 <= self.ema_decay <= 1, f"--ema-decay must be in [0, 1], got {self.ema_decay}"),
            (self.max_grad_norm > 0, f"--max-grad-norm must be > 0, got {self.max_grad_norm}"),
            (self.mixed_precision in MIXED_PRECISION, f"--mixed-precision must be one of {MIXED_PRECISION}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0, got {self.keep_checkpoints}"),
            (self.resolution is None or self.resolution > 0, f"--resolution must be > 0, got {self.resolution}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(str(self.out).rstrip("/") + ".run")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> DistillConfig:
        """A recorded recipe (a run's config.json, tiue.json's provenance), refused in one line when
        it names an option this version does not have."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(
                f"unknown distill config keys: {', '.join(unknown)} (a recipe of another tiue-export version: resume or export it with that version)"
            )
        data = dict(data)
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)

    def differences(self, other: DistillConfig) -> list[str]:
        """Fields whose values differ and that a resume must not change: all but length and logging,
        and the length too under a decaying lr schedule."""
        a, b = self.to_dict(), other.to_dict()
        free = set(RESUMABLE_CHANGES)
        if a["lr_schedule"] != "constant" or b["lr_schedule"] != "constant":
            free -= {"steps", "epochs"}  # a decaying lr is a function of the total length
        return [k for k in a if k not in free and a[k] != b[k]]

    def replace(self, **changes) -> DistillConfig:
        return replace(self, **changes)

