"""An endless, resumable, rank-aware stream of sample indices.

Training is counted in iterations, not epochs. The stream is an infinite concatenation of
random permutations of the images (permutation e seeded by (seed, e)); iteration t uses stream
positions [t*B, (t+1)*B) for a global batch B, and DDP rank r of W takes the r-th contiguous
slice of B/W of them. Consequences:

* a resumed run continues at position t*B exactly: the sampler's state *is* the iteration;
* W processes see, together, the same samples as one process with the same global batch;
* no DataLoader restarts every few iterations on a 291-image set, so no "enlarge the dataset
  x100" knob (BasicSR's `dataset_enlarge_ratio`) is needed.

It shards like `torch.utils.data.DistributedSampler` but by iteration rather than by epoch,
because an epoch of T91+BSD200 at batch 64 is four and a half iterations and DistributedSampler
can only resume at an epoch boundary.

Each item is `(image_index, stream_position)`: the position seeds that sample's crop and
flips, so augmentation does not depend on which worker process draws it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 2, epoch]).permutation(num_images)


class IterationSampler(Sampler[tuple[int, int]]):
    def __init__(
        self,
        num_images: int,
        global_batch: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.num_images = num_images
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.start_iteration = start_iteration
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def image_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_images)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, permutation(self.num_images, self.seed, epoch)
        return int(self._perm[offset])

    def positions(self, iteration: int) -> range:
        """Stream positions this rank uses at `iteration`."""
        start = iteration * self.global_batch + self.rank * self.local_batch
        return range(start, start + self.local_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        t = self.start_iteration
        while True:
            for k in self.positions(t):
                yield self.image_at(k), k
            t += 1

    def state(self, iteration: int) -> dict[str, int]:
        """Where the data stream stands after `iteration` steps (saved in checkpoints)."""
        seen = iteration * self.global_batch
        return {
            "iteration": iteration,
            "samples_seen": seen,
            "epoch": seen // self.num_images,
            "num_images": self.num_images,
            "global_batch": self.global_batch,
        }
