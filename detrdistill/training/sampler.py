"""A batch sampler that can start at any step, repeats exactly for a given seed, and splits
each global batch over processes; and per-sample seeded augmentation.

Epoch e visits the training set in the order ``randperm(n)`` drawn from seed + e, so a
resumed run sees the same batches an uninterrupted one would have seen. With P processes,
process p takes the p-th of P equal slices of every global batch.

Augmentation draws from torch's global RNG (``data/transforms.py``). For a sample's
augmentation not to depend on which process draws it, or on what that process drew before,
``SeededAugmentation`` reseeds the RNG per sample from (seed, epoch, index), then restores it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample ``index`` in ``epoch``."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ResumableBatchSampler(Sampler[list]):
    """Endless batches (last incomplete global batch of an epoch dropped).

    Args:
        num_samples: dataset size.
        batch_size: images per global batch (summed over processes).
        seed: base seed of the per-epoch permutations.
        start_step: number of global batches already consumed (for resuming).
        num_processes, process_index: this process's share is images
            ``[p * b, (p + 1) * b)`` of each global batch, b = batch_size / num_processes.
        augment_seeds: yield ``(index, augmentation seed)`` pairs for ``SeededAugmentation``
            instead of plain indices.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
        augment_seeds: bool = False,
    ):
        if num_samples < batch_size:
            raise ValueError(
                f"the training split has {num_samples} images, fewer than one batch of {batch_size}: "
                "lower data.batch_size or add images"
            )
        if batch_size % num_processes:
            raise ValueError(
                f"data.batch_size {batch_size} (the global batch) does not split evenly over {num_processes} "
                f"processes: make it a multiple of {num_processes}"
            )
        self.num_samples, self.batch_size, self.seed, self.start_step = num_samples, batch_size, seed, start_step
        self.batches_per_epoch = num_samples // batch_size
        self.per_process = batch_size // num_processes
        self.first = process_index * self.per_process
        self.augment_seeds = augment_seeds

    def __iter__(self) -> Iterator[list]:
        step = self.start_step
        while True:
            epoch, offset = divmod(step, self.batches_per_epoch)
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in range(offset, self.batches_per_epoch):
                start = batch * self.batch_size + self.first
                indices = order[start : start + self.per_process].tolist()
                if self.augment_seeds:
                    yield [(index, augmentation_seed(self.seed, epoch, index)) for index in indices]
                else:
                    yield indices
                step += 1


class SeededAugmentation(Dataset):
    """``dataset[index]`` with torch's RNG seeded by the sample's own seed during the call.

    Items are ``(index, seed)`` pairs (``ResumableBatchSampler(augment_seeds=True)``). The
    global RNG state is restored afterwards, so dropout and the rest of training never
    see the augmentation draws.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues seeds for every
            # accelerator backend, which records a stack trace each call (~1 ms a sample).
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
