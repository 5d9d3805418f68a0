"""Training prompts: loaded from a prompt file (:mod:`tiue_export.prompts`), sharded by rank."""

from __future__ import annotations

from ..prompts import load_prompts

__all__ = ["load_prompts", "make_loader"]


def make_loader(prompts: list[str], batch_size: int, rank: int, world: int, seed: int):
    """A DataLoader of prompt lists: shuffled per epoch by ``seed``, each rank its own shard.

    ``DistributedSampler`` pads the epoch by wrapping around so every rank gets the same number
    of batches; call ``loader.sampler.set_epoch(e)`` before each epoch.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(prompts, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(prompts, batch_size=batch_size, sampler=sampler, collate_fn=list)
