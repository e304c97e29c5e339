"""A batch sampler that can start at any step and repeats exactly for a given seed.

Epoch e visits the training set in the order ``randperm(n)`` drawn from seed + e, so a
resumed run sees the same batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of ``batch_size`` indices (last incomplete batch of an epoch dropped).

    Args:
        num_samples: dataset size.
        batch_size: images per batch.
        seed: base seed of the per-epoch permutations.
        start_step: number of batches already consumed (for resuming).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int = 0):
        if num_samples < batch_size:
            raise ValueError(
                f"the training split has {num_samples} images, fewer than one batch of {batch_size}: "
                "lower data.batch_size or add images"
            )
        self.num_samples, self.batch_size, self.seed, self.start_step = num_samples, batch_size, seed, start_step
        self.batches_per_epoch = num_samples // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, offset = divmod(step, self.batches_per_epoch)
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in range(offset, self.batches_per_epoch):
                yield order[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()
                step += 1
