"""``tiue-export toy``: the built-in toy domain and its teacher (``train-teacher``, ``eval``, ...).

Subcommands in other modules register in :data:`TOY_COMMANDS` (name -> module, attribute, help)
and are imported only when run; one whose module is not installed is simply not listed.
"""

from __future__ import annotations

import importlib
import importlib.util
import shlex

import click

from .types import SEED

TOY_COMMANDS = {
    "eval": ("tiue_export.cli.toy_eval", "eval_cmd", "Score a model on the toy domain (attribute accuracy, FD, ...)."),
    "compare": ("tiue_export.cli.toy_eval", "compare_cmd", "Model B minus model A on the same captions and seeds, with a 95% interval."),
    "train-classifier": ("tiue_export.cli.toy_eval", "train_classifier_cmd", "Train the attribute classifier that toy eval measures with."),
}


def _available(name: str) -> bool:
    module = TOY_COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class ToyGroup(click.Group):
    """The ``toy`` group: commands defined here plus lazily imported ones from TOY_COMMANDS."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {n for n in TOY_COMMANDS if _available(n)})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in TOY_COMMANDS and _available(name):
            module, attr, _ = TOY_COMMANDS[name]
            cmd = getattr(importlib.import_module(module), attr)
        return cmd

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit=80)))
            else:
                rows.append((name, TOY_COMMANDS[name][2]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group("toy", cls=ToyGroup)
def toy():
    """The built-in toy domain (captioned shapes) and its small Stable-Diffusion-shaped teacher."""


@toy.command("train-teacher")
@click.option("--out", required=True, type=click.Path(), help="Pipeline directory to write (replaced atomically at the end).")
@click.option("--work-dir", type=click.Path(), default=None, help="Checkpoints, latent pool, config [default: OUT.train].")
@click.option("--vae-steps", type=click.IntRange(0), default=None, help="VAE optimisation steps [default: from the config].")
@click.option("--steps", type=click.IntRange(0), default=None, help="UNet + text-encoder steps [default: from the config].")
@click.option("--seed", type=SEED, default=None, help="Seed of data, initialisation and noise [default: 0].")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads [default: 2].")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None, help="Steps between resumable checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the work directory.")
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines only).")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="A teacher config as JSON (the training_config.json a trained teacher holds) [default: the built-in one]; "
              "the options above override it.")
def train_teacher_cmd(out, work_dir, vae_steps, steps, seed, threads, checkpoint_every, resume, no_progress, config_file):
    """Train the toy teacher (VAE, then UNet + text encoder) into a diffusers pipeline directory.

    The defaults take about 50 minutes on 2 CPU cores; the shipped toy-teacher is that run
    extended with --resume --steps 7000 (docs/toy.md). Interrupted runs continue with --resume.
    """
    import os
    from dataclasses import replace

    # On shared cores, OpenMP threads that spin while waiting at barriers slow every process on
    # the machine; sleeping costs nothing when idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from . import quiet_libraries

    quiet_libraries()
    from ..toy.teacher import TeacherConfig, read_config, train_teacher

    config = read_config(config_file) if config_file else TeacherConfig()
    overrides = {"vae_steps": vae_steps, "unet_steps": steps, "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    ctx = click.get_current_context()
    args = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f"={shlex.quote(str(v))}")
        for k, v in ctx.params.items()
        if v not in (None, False) and k != "out"
    ]
    command = " ".join([ctx.command_path, f"--out={shlex.quote(str(out))}", *args])
    click.echo(f"wrote {train_teacher(out, config, work_dir=work_dir, resume=resume, progress=not no_progress, command=command)}")
