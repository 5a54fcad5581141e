"""Host side of the training data path: memory-mapped tokens -> batches on the device.

The tokens were tokenised once (``tokenise`` rule), so a training step only gathers raw
patches: one ``np.take`` per shard of the (sorted) galaxy rows straight from the memory-mapped
shards into a staging buffer, pinned when the device is a GPU, then an asynchronous copy. Patch
normalisation runs on the device afterwards (``astropt.patches.normalise``).

``benchmarks/loader_throughput.py`` measures this path against AstroPT v1's per-step PNG
decoding: gathering into the staging buffer in one copy (no intermediate array) roughly
doubles the host throughput of a plain fancy-index + ``pin_memory()``.
"""

from __future__ import annotations

import numpy as np
import torch


class BatchGatherer:
    """Gathers batches of raw token rows into reusable (pinned) buffers and ships them.

    Two buffers alternate; on a GPU the copy out of a buffer is recorded with an event and
    the buffer is only refilled once that copy has finished, so the host can gather batch
    k+1 while batch k is still in flight.

    Args:
        tokens: (N, T, D) token shards (:class:`astropt.shards.ShardedTokens`, a split's
            ``tokens`` from :func:`astropt.shards.load_tokens`).
        batch_size: largest batch that will be requested.
        device: where batches go.
    """

    def __init__(self, tokens, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.tokens = tokens
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        shape = (batch_size, *tokens.shape[1:])
        dtype = torch.from_numpy(np.zeros(0, dtype=tokens.dtype)).dtype
        n_buffers = 2 if self.cuda else 1
        self.buffers = [torch.empty(shape, dtype=dtype, pin_memory=self.cuda) for _ in range(n_buffers)]
        self.events: list[torch.cuda.Event | None] = [None] * n_buffers
        self.turn = 0

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        """Raw rows ``tokens[sorted(indices)]`` as a tensor on the device.

        On the CPU the returned tensor is the staging buffer itself: use it (e.g.
        normalise it into a new tensor) before the next call.
        """
        n = len(indices)
        if n > self.buffers[0].shape[0]:
            raise ValueError(f"batch of {n} galaxies exceeds the gatherer's buffers ({self.buffers[0].shape[0]})")
        # Checked here, not left to ShardedTokens.take: it would count negative indices from the end.
        if n and (indices.min() < 0 or indices.max() >= len(self.tokens)):
            bad = int(((indices < 0) | (indices >= len(self.tokens))).sum())
            raise IndexError(f"{bad} galaxy indices outside 0..{len(self.tokens) - 1}")
        i = self.turn
        self.turn = (self.turn + 1) % len(self.buffers)
        if self.events[i] is not None:
            self.events[i].synchronize()  # the previous copy out of this buffer is done
        buf = self.buffers[i][:n]
        # Sorted rows read the shards in file order, straight into the buffer.
        self.tokens.take(np.sort(indices), out=buf.numpy())
        if not self.cuda:
            return buf
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[i] = event
        return out
