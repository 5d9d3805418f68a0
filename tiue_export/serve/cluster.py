"""Joining a Ray cluster, or starting a local one, for ``serve`` and ``generate``."""

from __future__ import annotations

from ..errors import InputError, TiueError, first_line


def connect(address: str | None, local_options: dict | None = None) -> bool:
    """``ray.init``: join the cluster at ``address``, or start a local Ray (no dashboard) with
    ``local_options``; nothing when Ray is already up. Returns whether this call started it.

    Raises:
        TiueError: the cluster cannot be joined, in one line with what to check.
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(**{"include_dashboard": False, "log_to_driver": False, **(local_options or {})})
        return True
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        causes, cur = [], exc
        while cur is not None and len(causes) < 5:
            causes.append(str(cur))
            cur = cur.__cause__ or cur.__context__
        hint = ""
        if "auth" in " ".join(causes).lower():
            hint = (
                ": the cluster wants its token: RAY_AUTH_MODE=token and the head's ~/.ray/auth_token (or RAY_AUTH_TOKEN), "
                "or --address auto on one of its nodes"
            )
        raise TiueError(f"cannot join the Ray cluster at {address} ({first_line(exc)}){hint}") from exc
    return True


def check_resources(asks: dict[str, tuple[str, float]], count: int, what: str) -> None:
    """Refuse, in one line, ``count`` actors that the joined cluster cannot place: Ray would wait
    for them forever, without a word. ``asks``: resource (``CPU``, ``GPU``) -> (the flag that asked,
    the amount per actor); ``what``: the actors' name (``workers``, ``replicas``).

    A cluster that adds nodes on demand (an autoscaler) is judged by the nodes it has now.
    """
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for resource, (flag, each) in asks.items():
        if each <= 0:
            continue
        has = total.get(resource, 0.0)
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        if _units(each) > _units(largest):
            where = f"its largest node has {largest:g}, " if len(nodes) > 1 else ""
            raise InputError(f"{flag} {each:g} asks for more {resource}s than the Ray cluster can give one actor ({where}{has:g} {resource}s in all)")
        if _units(each) * count > _units(has):
            raise InputError(f"{count} {what} x {flag} {each:g} is {each * count:g} {resource}s; the Ray cluster has {has:g}: ask for fewer")


def _units(amount: float) -> int:
    """``amount`` in Ray's own unit of a resource (1/10000: it keeps them as fixed-point numbers), so
    that 50 asks of 0.14 CPUs fit 7 CPUs as they do in Ray, where 0.14 * 50 is 7.000000000000001."""
    return round(amount * 10_000)
