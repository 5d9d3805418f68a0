"""Joining a Ray cluster, or starting a local one, for ``serve`` and ``generate``."""

from __future__ import annotations

from ..errors import TiueError, first_line


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
