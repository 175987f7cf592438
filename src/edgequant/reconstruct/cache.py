"""Calibration tensors at a unit boundary, in memory when small and on disk when not.

Reconstruction walks the units in order and needs, at the current boundary, the float model's
activation and the quantized model's activation for every calibration sample. A ``TensorStore``
holds one such (N, ...) tensor (float32, or float16 for caches that only feed a loss, half the
bytes): in RAM while all stores together stay under the memory budget, otherwise as a ``.npy``
memmap in a temporary directory (deleted on ``close``), filled batch by batch; reads are float32. Moving to the next boundary streams batches from the old stores through the unit
into new ones, so memory is bounded by the budget plus one batch, whatever the net's size;
activations inside a unit are recomputed from its entry on every step instead of being stored.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


class StoreSpace:
    """Where stores live: the RAM budget still free and the temp directory (made on first use)."""

    def __init__(self, memory_bytes: int = 256 << 20, directory: str | None = None) -> None:
        self.memory_left = int(memory_bytes)
        self.parent = directory
        self._dir: Path | None = None
        self._count = 0
        self.disk_bytes = 0

    def path(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgequant-recon-", dir=self.parent))
        self._count += 1
        return self._dir / f"t{self._count}.npy"

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class TensorStore:
    """One (N, ...) tensor, written in order batch by batch, read by sample index as float32."""

    def __init__(self, space: StoreSpace, shape: tuple[int, ...], dtype=np.float32) -> None:
        self.space = space
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.on_disk = nbytes > space.memory_left
        self.path: Path | None = None
        if self.on_disk:
            self.path = space.path()
            self.data = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
            space.disk_bytes += nbytes
        else:
            self.data = np.empty(self.shape, self.dtype)
            space.memory_left -= nbytes
        self._nbytes = nbytes
        self._filled = 0

    def __len__(self) -> int:
        return self.shape[0]

    def append(self, batch: torch.Tensor) -> None:
        b = batch.detach().to(torch.float32).cpu().numpy().astype(self.dtype, copy=False)
        self.data[self._filled : self._filled + len(b)] = b
        self._filled += len(b)

    def get(self, index: np.ndarray, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Rows ``index`` (sorted reads are fastest on disk) as a float32 tensor; only the spatial
        ``box`` (rows r0:r1, cols c0:c1 of an (N, C, H, W) store) when given."""
        rows = np.sort(index)
        part = self.data[rows] if box is None else self.data[rows, :, box[0]:box[1], box[2]:box[3]]
        return torch.from_numpy(np.ascontiguousarray(part, np.float32))

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self), size):
            yield torch.from_numpy(np.ascontiguousarray(self.data[i : i + size], np.float32))

    def release(self) -> None:
        """Give the memory (or the file) back."""
        if self.on_disk:
            self.data.flush()
            del self.data
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            self.space.disk_bytes -= self._nbytes
        else:
            del self.data
            self.space.memory_left += self._nbytes


def map_stores(space: StoreSpace, inputs: list[TensorStore], fn: Callable[..., torch.Tensor],
               batch_size: int = 128, dtype=np.float32) -> TensorStore:
    """A new store holding ``fn(*batches)`` over the rows of ``inputs`` (streamed, no grad)."""
    out: TensorStore | None = None
    with torch.no_grad():
        iters = [s.batches(batch_size) for s in inputs]
        for parts in zip(*iters):
            y = fn(*parts)
            if out is None:
                out = TensorStore(space, (len(inputs[0]),) + tuple(y.shape[1:]), dtype)
            out.append(y)
    if out is None:
        raise ValueError("map_stores over an empty store")
    return out
