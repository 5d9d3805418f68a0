"""``tiue-export cache``: the OpenVINO graph cache on disk (``show``, ``clear``)."""

from __future__ import annotations

import time

import click


def _root():
    from ..backends.graph_cache import cache_root
    from ..errors import InputError

    root = cache_root()
    if root is None:
        raise InputError("the graph cache is off (TIUE_EXPORT_OV_CACHE=0): nothing to show or clear")
    return root


class Size(click.ParamType):
    """A size such as ``500MB``, ``10GB``, ``2GiB`` or a number of bytes."""

    name = "size"

    def convert(self, value, param, ctx):
        from ..backends.graph_cache import parse_size
        from ..errors import InputError

        if isinstance(value, int):
            return value
        try:
            return parse_size(value, "")
        except InputError:
            self.fail(f"{value!r}: give a number of bytes with an optional unit (500MB, 10GB, 2GiB)", param, ctx)


@click.group("cache")
def cache():
    """The OpenVINO graph cache ($TIUE_EXPORT_CACHE/openvino): converted and compiled graphs,
    keyed by each graph's hash, least recently used first out past TIUE_EXPORT_OV_CACHE_MAX."""


@cache.command("show")
def show():
    """List the cache's entries, least recently used first, with their sizes and sources."""
    from ..backends.graph_cache import entries, format_size, max_bytes

    root = _root()
    held = entries(root)
    total = sum(e.bytes for e in held)
    click.echo(f"{root}: {len(held)} entr{'y' if len(held) == 1 else 'ies'}, {format_size(total)} (cap {format_size(max_bytes())})")
    for e in held:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        click.echo(f"  {e.key}  {format_size(e.bytes):>9}  used {used}  {e.source}")


@cache.command("clear")
@click.option(
    "--max-size",
    type=Size(),
    default=None,
    help="Keep the most recently used entries up to this size (500MB, 10GB) [default: remove every entry].",
)
def clear(max_size):
    """Remove cache entries, least recently used first; a process using one loads it again."""
    from ..backends.graph_cache import entries, evict, format_size

    root = _root()
    removed = evict(root, 0 if max_size is None else max_size)
    left = entries(root)
    click.echo(
        f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({format_size(sum(e.bytes for e in removed))}) "
        f"from {root}; {len(left)} left ({format_size(sum(e.bytes for e in left))})"
    )
