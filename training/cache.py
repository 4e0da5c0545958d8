"""On-disk, memory-mapped feature cache for frozen models.

Text recipes train the adapter on the outputs of frozen models: the teacher
(CLIP of the checkpoint) on the English text and the multilingual encoder on the
target text. Each is computed once per unique text and appended to a flat
float32 file that is read back through ``numpy.memmap``, so epochs never run the
frozen models again and memory stays flat however large the corpus.

A store lives in a folder named after a hash of its *key* (model fingerprint,
layer, what is stored, format version): when any of them changes, lookups go to
a new folder, which is how stale features are invalidated. Appends write the
data first and the index line second, so an interrupted run never leaves an
index entry pointing at missing data.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import InvalidDataError

__all__ = ["FeatureStore", "text_key"]

FORMAT = 1


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class FeatureStore:
    """Rows of width ``dim`` per text (a variable number of rows per text), memory-mapped.

    Args:
        root: the cache folder (many stores live side by side in it).
        key: what identifies the producing model, e.g. ``{"kind": "teacher", "fingerprint": ..., "layer": -2}``.
        dim: width of each row.
    """

    def __init__(self, root: str | os.PathLike, key: dict, dim: int):
        self.key = {**key, "dim": int(dim), "format": FORMAT}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = os.path.join(os.fspath(root), f"{key.get('kind', 'features')}-{digest}")
        os.makedirs(self.folder, exist_ok=True)
        self.dim = int(dim)
        self.data_path = os.path.join(self.folder, "data.f32")
        self.index_path = os.path.join(self.folder, "index.jsonl")
        key_path = os.path.join(self.folder, "key.json")
        if not os.path.exists(key_path):
            tmp = key_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.key, f, indent=1, sort_keys=True)
            os.replace(tmp, key_path)
        self.index: dict[str, tuple[int, int]] = {}
        self._load_index()
        self._map: np.memmap | None = None
        self._mapped_reads = 0

    def _load_index(self) -> None:
        if not os.path.exists(self.index_path):
            return
        size = os.path.getsize(self.data_path) // 4 if os.path.exists(self.data_path) else 0
        with open(self.index_path, encoding="utf-8") as f:
            for line in f:
                try:
                    h, offset, rows = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a line cut short by an interruption: its text is recomputed
                if (offset + rows) * self.dim <= size:
                    self.index[h] = (offset, rows)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self.index

    def missing(self, texts: Iterable[str]) -> list[str]:
        """Unique texts not in the store yet, in first-seen order."""
        return [t for t in dict.fromkeys(texts) if text_key(t) not in self.index]

    def add(self, texts: Sequence[str], arrays: Sequence[torch.Tensor | np.ndarray]) -> None:
        """Append one ``[rows, dim]`` array per text."""
        if len(texts) != len(arrays):
            raise ValueError("texts and arrays differ in length")
        chunks, entries = [], []
        offset = os.path.getsize(self.data_path) // (4 * self.dim) if os.path.exists(self.data_path) else 0
        for text, arr in zip(texts, arrays):
            a = arr.detach().float().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr, np.float32)
            a = a.reshape(-1, self.dim).astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                raise InvalidDataError(f"Non-finite features for text {text[:60]!r}: the frozen model produced NaN/Inf.")
            entries.append((text_key(text), offset, a.shape[0]))
            chunks.append(a)
            offset += a.shape[0]
        with open(self.data_path, "ab") as f:
            for a in chunks:
                f.write(np.ascontiguousarray(a).tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.index_path, "a", encoding="utf-8") as f:
            for h, o, n in entries:
                f.write(json.dumps([h, o, n]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for h, o, n in entries:
            self.index[h] = (o, n)
        self._map = None

    def _memmap(self) -> np.memmap:
        if self._map is None:
            rows = os.path.getsize(self.data_path) // (4 * self.dim)
            self._map = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(rows, self.dim))
        return self._map

    def get(self, text: str) -> torch.Tensor:
        """The ``[rows, dim]`` features of ``text`` (a copy, detached from the file)."""
        try:
            offset, rows = self.index[text_key(text)]
        except KeyError:
            raise KeyError(f"text not in feature cache {self.folder}: {text[:60]!r}") from None
        out = torch.from_numpy(np.array(self._memmap()[offset: offset + rows]))
        # Pages read through a mapping count as this process's resident memory until it is unmapped; map the
        # file afresh every ~256 MB read so memory stays flat however large the cache (the OS still caches it).
        self._mapped_reads += out.numel() * 4
        if self._mapped_reads > 256 * 1024 * 1024:
            self._map, self._mapped_reads = None, 0
        return out

    def fill(self, texts: Iterable[str], compute: Callable[[list[str]], Sequence[torch.Tensor]], *,
             batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> int:
        """Compute and store the features of every missing text; return how many were computed."""
        todo = self.missing(texts)
        for start in range(0, len(todo), batch_size):
            if should_stop is not None and should_stop():
                break
            batch = todo[start: start + batch_size]
            self.add(batch, compute(batch))
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
        return len(todo)
