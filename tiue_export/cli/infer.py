"""``tiue-export infer``: prompts in, PNGs out, with per-stage timings."""

from __future__ import annotations

import click

from ..backends import ENGINES, REGISTRY
from ..errors import InputError
from .types import COUNT, FINITE, SEED, compile_option, torch_device_options


def read_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    """The --prompt texts, then the file's lines (blank lines skipped), each checked by the prompt
    rules (:func:`~tiue_export.prompts.check_prompt`) and named by where it came from."""
    from ..prompts import check_prompt

    out = [check_prompt(p, "--prompt") for p in prompts]
    if prompts_file:
        from ..files import read_text

        lines = read_text(prompts_file, "prompts file").splitlines()
        out += [check_prompt(line.strip(), f"{prompts_file}:{n}: the prompt") for n, line in enumerate(lines, 1) if line.strip()]
    if not out:
        raise InputError("no prompt given: use --prompt TEXT or --prompts-file FILE")
    return out


@click.command("infer")
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable).")
@click.option("--prompts-file", type=click.Path(), help="Text file, one prompt per line.")
@click.option("--model", type=click.Path(), help="Model directory or bundle [default: the built-in model].")
@click.option(
    "--backend",
    type=click.Choice(list(ENGINES) + [n for n in REGISTRY if n not in ENGINES]),
    default="torch",
    show_default=True,
    help="torch: a model directory; onnxruntime / openvino: an exported bundle (no torch needed); tensorrt: a bundle's "
    "engines; or a registry name such as openvino-int8.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default=None,
    help="Bundle graphs to run: int8 = the Q/DQ graphs of tiue-export calibrate; with tensorrt, which engines; with "
    "openvino, fp32/bf16/fp16 = the compute precision [default: the bundle's own / its only engines / the CPU's "
    "default, bf16 on CPUs with bf16 units].",
)
@click.option("--sampler", default=None, help="one-pass | loop | ddim:N  [default: one-pass; ddim:50 for a teacher]")
@click.option("--guidance", type=FINITE, default=None, help="CFG scale of the ddim:N sampler [default: the model's, else 7.5].")
@click.option("--k", type=click.IntRange(1, 1000), default=None, help="Override the number of decoder timesteps.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the first image; image j uses seed+j.")
@click.option("--num-images", type=click.IntRange(1, 10000), default=1, show_default=True, help="Images per prompt.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--height", type=COUNT, default=None, help="Image height [default: the model's].")
@click.option("--width", type=COUNT, default=None, help="Image width [default: the model's].")
@click.option(
    "--noise",
    type=click.Choice(["numpy", "torch"]),
    default="numpy",
    show_default=True,
    help="z_T source: numpy (same on every backend) or torch (torch.Generator per image, as the authors' script).",
)
@click.option("--out", default="outputs", show_default=True, help="Output directory, or FILE.png for one image.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out FILE.png.")
@click.option(
    "--low-memory",
    is_flag=True,
    help="onnxruntime / openvino: hold one graph at a time (peak = the largest graph and its activations, not all of "
    "them); each batch pays the graphs' load time.",
)
@torch_device_options
@compile_option
@click.option("--vae", default="full", show_default=True, help="full, or tiny: the distilled tiny decoder (a bundle's tiny variant; "
              "torch: the model's distill-vae decoder, or a distill-vae directory).")
def infer(prompts, prompts_file, seed, num_images, batch_size, out, overwrite, **options):
    """Generate images from prompts with the one-pass sampler (or a reference sampler)."""
    from ..generator import GenerateOptions, InferConfig, infer

    generate = GenerateOptions(**options)
    cfg = InferConfig(tuple(read_prompts(prompts, prompts_file)), generate, seed, num_images, batch_size, out, overwrite)
    if generate.engine == "torch":
        from . import quiet_libraries

        quiet_libraries()
    click.echo(infer(cfg, wrote=lambda path: click.echo(f"wrote {path}")))
