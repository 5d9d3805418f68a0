"""``tiue-export distill-vae``: a tiny VAE decoder (AutoencoderTiny) distilled from a model's own VAE."""

from __future__ import annotations

import click

from ..distill.config import MIXED_PRECISION
from ..errors import InputError
from .types import COUNT, POSITIVE, SEED

#: Defaults, read from the config dataclass without importing torch.
DEFAULTS = {"samples": 4096, "width": 64, "steps": 2000, "batch_size": 16, "lr": 1e-3, "lr_warmup_steps": 50, "checkpoint_every": 250, "keep_checkpoints": 2}


def _blocks(text):
    if text is None:
        return None
    try:
        blocks = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"--blocks takes comma-separated counts, e.g. 3,3,1; got {text!r}") from None
    return blocks


@click.command("distill-vae")
@click.option("--model", type=click.Path(), default=None, help="Pipeline directory whose VAE decoder to distil [default: the built-in model].")
@click.option("--out", required=True, type=click.Path(), help="AutoencoderTiny directory to write (loadable with AutoencoderTiny.from_pretrained).")
@click.option("--run-dir", type=click.Path(), default=None, help="Checkpoints, log, config and latent pool [default: OUT.run].")
@click.option("--images", type=click.Path(), default=None, help="Folder of training images (the last tenth by name is held out) [default: toy renders for the toy VAE without --prompts, else the model's own samples].")
@click.option("--samples", type=COUNT, default=DEFAULTS["samples"], show_default=True, help="Without --images: toy-domain renders (toy VAE without --prompts), else z0 the model samples itself (the last tenth held out).")
@click.option("--prompts", type=click.Path(), default=None, help="Prompts the model samples from for --samples, one a line; given, a toy-VAE model learns on its own z0 too, not renders [default: tiue_export/calibration/prompts.txt].")
@click.option("--width", type=COUNT, default=DEFAULTS["width"], show_default=True, help="Channels of every decoder stage (TAESD: 64).")
@click.option("--blocks", default=None, help="AutoencoderTinyBlocks per stage, e.g. 3,3,1  [default: TAESD's 3,...,3,1, one stage per upsampling + 1]")
@click.option("--steps", type=COUNT, default=DEFAULTS["steps"], show_default=True)
@click.option("--batch-size", type=COUNT, default=DEFAULTS["batch_size"], show_default=True, help="Latents per device and step.")
@click.option("--lr", type=POSITIVE, default=DEFAULTS["lr"], show_default=True, help="Adam learning rate (cosine decay to 0 at the last step).")
@click.option("--lr-warmup-steps", type=click.IntRange(0, None), default=DEFAULTS["lr_warmup_steps"], show_default=True)
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default="no", show_default=True, help="bf16: twice as fast on CPUs with AMX; weights stay fp32.")
@click.option("--checkpoint-every", type=COUNT, default=DEFAULTS["checkpoint_every"], show_default=True, help="Steps between resumable checkpoints.")
@click.option("--keep-checkpoints", type=click.IntRange(0, None), default=DEFAULTS["keep_checkpoints"], show_default=True, help="Checkpoints to keep (0: all).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue bit-for-bit from the latest checkpoint in the run directory.")
def distill_vae(**opts):
    """Distil the model's VAE decoder into a tiny AutoencoderTiny decoder (pixel MSE to the full decode).

    The tiny decoder takes z0 exactly as the full vae_decoder graph does and gives images in [-1, 1];
    `export --vae tiny` puts it in a bundle as a variant of vae_decoder.
    """
    from . import quiet_libraries

    quiet_libraries()
    resume = opts.pop("resume")
    opts["blocks"] = _blocks(opts["blocks"])
    from ..distill.tiny_vae import VaeDistillConfig
    from ..distill.tiny_vae import distill_vae as run

    result = run(VaeDistillConfig(**opts), resume=resume)
    if result.is_main:
        score = "" if result.psnr_held_out is None else f"; held-out PSNR vs the full decoder {result.psnr_held_out:.2f} dB"
        click.echo(f"wrote {result.out} ({result.steps} steps{score})")
