"""On-disk feature cache for frozen models.

Text recipes train the adapter on the outputs of frozen models: the teacher
(CLIP of the checkpoint) on the English text and the multilingual encoder on the
target text. Each is computed once per unique text and appended to a flat file
of ``float32`` or ``float16`` rows, so epochs never run the frozen models again.

Memory stays flat however large the corpus:

* rows are read back with positioned reads (``os.pread``) into fresh buffers.
  The operating system keeps the file in its page cache, but none of it counts
  as this process's resident memory (pages of a memory-mapped file do, until
  unmapped: the benchmark measured 190-340 MB of mapped pages this way);
* the index (text -> where its rows are) is three sorted numpy arrays, 28 bytes
  per text, instead of a dict of strings and tuples (about 200 bytes per text).

``float16`` stores are upcast to ``float32`` on read; a value outside the
``float16`` range is refused when written, never stored as infinity.

A store lives in a folder named after a hash of its *key* (model fingerprint,
layer, layout, dtype, row width, format version): when any of them changes,
lookups go to a new folder, which is how stale features are invalidated and why
a store written in one layout or dtype is never read as another. The key is also
written to ``key.json`` and checked when the folder is opened. Appends write the
data first and the index line second, so an interrupted run never leaves an
index entry pointing at missing data.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import InvalidDataError

__all__ = ["FeatureStore", "text_key", "DTYPES"]

FORMAT = 1
#: dtype name -> (numpy dtype, data file name)
DTYPES = {"float32": (np.float32, "data.f32"), "float16": (np.float16, "data.f16")}
_FP16_MAX = float(np.finfo(np.float16).max)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def _digests(texts: Sequence[str]) -> np.ndarray:
    """The digests of ``texts`` as one ``S16`` array (no Python bytes object per text is kept)."""
    return np.fromiter((_digest(t) for t in texts), dtype="S16", count=len(texts))


class _Index:
    """text digest (16 bytes) -> (first row, row count), as sorted numpy arrays (28 bytes per text)."""

    def __init__(self):
        self.keys = np.empty(0, "S16")
        self.offsets = np.empty(0, np.int64)
        self.rows = np.empty(0, np.int32)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, digests: np.ndarray) -> np.ndarray:
        """Position of each digest in the arrays, -1 where absent."""
        pos = np.searchsorted(self.keys, digests)
        clipped = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (pos < len(self.keys)) & (self.keys[clipped] == digests) if len(self.keys) else np.zeros(len(pos), bool)
        return np.where(found, clipped, -1)

    def add(self, digests: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
        """Insert entries; a digest added again points at its latest rows (as the index file is read)."""
        order = np.argsort(digests, kind="stable")
        d = digests[order]
        last = np.append(d[1:] != d[:-1], True) if len(d) else np.zeros(0, bool)  # keep the last of equal digests
        order = order[last]
        d, o, r = digests[order], offsets[order], rows[order]
        old = self.find(d)
        if (old >= 0).any():
            drop = old[old >= 0]
            self.keys, self.offsets, self.rows = (np.delete(a, drop) for a in (self.keys, self.offsets, self.rows))
        at = np.searchsorted(self.keys, d)
        self.keys = np.insert(self.keys, at, d)
        self.offsets = np.insert(self.offsets, at, o)
        self.rows = np.insert(self.rows, at, r)


class FeatureStore:
    """Rows of width ``dim`` per text (a variable number of rows per text), read back without mapping the file.

    Args:
        root: the cache folder (many stores live side by side in it).
        key: what identifies the producing model and what is stored, e.g.
            ``{"kind": "teacher", "fingerprint": ..., "layout": "mean+pooled"}``.
        dim: width of each row.
        dtype: ``"float32"`` or ``"float16"`` (half the disk and reads; upcast to float32 on read).
    """

    def __init__(self, root: str | os.PathLike, key: dict, dim: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"unknown feature dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        own = {"dim": int(dim), "dtype": dtype, "format": FORMAT}
        if own.keys() & key.keys():  # the store's fields would silently replace the caller's: two kinds, one key
            raise ValueError(f"a feature cache key may not set {sorted(own.keys() & key.keys())}: the store sets "
                             "them (the stored rows' width, dtype and format); name the caller's field otherwise")
        self.key = {**key, **own}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = os.path.join(os.fspath(root), f"{key.get('kind', 'features')}-{digest}")
        os.makedirs(self.folder, exist_ok=True)
        self.dim, self.dtype = int(dim), dtype
        self.np_dtype, data_name = DTYPES[dtype]
        self.itemsize = np.dtype(self.np_dtype).itemsize
        self.row_bytes = self.dim * self.itemsize
        self.data_path = os.path.join(self.folder, data_name)
        self.index_path = os.path.join(self.folder, "index.jsonl")
        key_path = os.path.join(self.folder, "key.json")
        if os.path.exists(key_path):
            try:
                with open(key_path, encoding="utf-8") as f:
                    stored = json.load(f)
            except (OSError, ValueError):
                stored = None
            if stored is not None and stored != json.loads(json.dumps(self.key)):
                raise InvalidDataError(
                    f"The feature cache folder {self.folder!r} holds features of another kind ({stored}); expected "
                    f"{self.key}. Delete the folder; it is recomputed.")
        else:
            tmp = key_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.key, f, indent=1, sort_keys=True)
            os.replace(tmp, key_path)
        self.index = _Index()
        self._load_index()
        self._fd: int | None = None
        self._file = None  # where os.pread is missing (Windows): a file object read under a lock
        self._lock = threading.Lock()

    def _rows_on_disk(self) -> int:
        return os.path.getsize(self.data_path) // self.row_bytes if os.path.exists(self.data_path) else 0

    def _load_index(self) -> None:
        if not os.path.exists(self.index_path):
            return
        size = self._rows_on_disk()
        keys, offsets, rows = [], [], []
        with open(self.index_path, encoding="utf-8") as f:
            for line in f:
                try:
                    h, offset, n = json.loads(line)
                    key = bytes.fromhex(h)
                except (ValueError, TypeError):
                    continue  # a line cut short by an interruption: its text is recomputed
                if len(key) == 16 and offset + n <= size:
                    keys.append(key)
                    offsets.append(offset)
                    rows.append(n)
        if keys:
            self.index.add(np.array(keys, "S16"), np.array(offsets, np.int64), np.array(rows, np.int32))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, text: str) -> bool:
        return not bool(self.absent([text])[0])

    def __getstate__(self):  # an open file descriptor does not travel to another process
        state = self.__dict__.copy()
        state.update(_fd=None, _file=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def absent(self, texts: Sequence[str]) -> np.ndarray:
        """A boolean array: which of ``texts`` are not in the store."""
        return self.index.find(_digests(texts)) < 0

    def missing(self, texts: Iterable[str]) -> list[str]:
        """Unique texts not in the store yet, in first-seen order."""
        unique = list(dict.fromkeys(texts))
        return [unique[i] for i in np.flatnonzero(self.absent(unique))] if unique else []

    def add(self, texts: Sequence[str], arrays: Sequence[torch.Tensor | np.ndarray]) -> None:
        """Append one ``[rows, dim]`` array per text."""
        if len(texts) != len(arrays):
            raise ValueError("texts and arrays differ in length")
        chunks, digests, offsets, counts = [], [], [], []
        offset = self._rows_on_disk()
        for text, arr in zip(texts, arrays):
            a = arr.detach().float().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr, np.float32)
            a = a.reshape(-1, self.dim)
            if not np.isfinite(a).all():
                raise InvalidDataError(f"Non-finite features for text {text[:60]!r}: the frozen model produced NaN/Inf.")
            if self.np_dtype is np.float16 and a.size and float(np.abs(a).max()) > _FP16_MAX:
                raise InvalidDataError(
                    f"Features of text {text[:60]!r} reach {float(np.abs(a).max()):.3g}, beyond the float16 range of "
                    f"this cache: the frozen model's outputs are unusually large; check the model.")
            chunks.append(np.ascontiguousarray(a, dtype=self.np_dtype))
            digests.append(_digest(text))
            offsets.append(offset)
            counts.append(a.shape[0])
            offset += a.shape[0]
        with open(self.data_path, "ab") as f:
            for a in chunks:
                f.write(a.tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.index_path, "a", encoding="utf-8") as f:
            for d, o, n in zip(digests, offsets, counts):
                f.write(json.dumps([d.hex(), o, n]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if digests:
            self.index.add(np.array(digests, "S16"), np.array(offsets, np.int64), np.array(counts, np.int32))

    # -- reading ---------------------------------------------------------------------------------
    def _read_into(self, out: np.ndarray, row: int) -> None:
        """Fill the contiguous array ``out`` with the rows starting at ``row``."""
        view, start = memoryview(out).cast("B"), row * self.row_bytes
        if self._fd is None and self._file is None:
            if hasattr(os, "preadv"):
                self._fd = os.open(self.data_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            else:
                self._file = open(self.data_path, "rb")  # noqa: SIM115  (kept open for the store's lifetime)
        if self._fd is not None:
            got = os.preadv(self._fd, [view], start)
        else:
            with self._lock:
                self._file.seek(start)
                got = self._file.readinto(view)
        if got != len(view):
            raise InvalidDataError(f"The feature cache file {self.data_path!r} is shorter than its index says; "
                                   f"delete {self.folder!r} and it is recomputed.")

    def _locate(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        pos = self.index.find(_digests(texts))
        if (pos < 0).any():
            text = texts[int(np.argmax(pos < 0))]
            raise KeyError(f"text not in feature cache {self.folder}: {text[:60]!r}")
        return self.index.offsets[pos], self.index.rows[pos]

    def get(self, text: str) -> torch.Tensor:
        """The ``[rows, dim]`` float32 features of ``text`` (a fresh tensor, detached from the file)."""
        (offset,), (rows,) = self._locate([text])
        out = np.empty((int(rows), self.dim), self.np_dtype)
        self._read_into(out, int(offset))
        return torch.from_numpy(out if out.dtype == np.float32 else out.astype(np.float32))

    def get_many(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), rows, dim]`` float32 features of texts that all have the same number of rows."""
        offsets, rows = self._locate(texts)
        if len(set(rows.tolist())) > 1:
            raise ValueError("get_many() needs texts with equal row counts; use get() for each")
        out = np.empty((len(texts), int(rows[0]) if len(rows) else 0, self.dim), self.np_dtype)
        for i, offset in enumerate(offsets.tolist()):
            self._read_into(out[i], offset)
        return torch.from_numpy(out if out.dtype == np.float32 else out.astype(np.float32))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

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
