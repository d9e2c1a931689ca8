"""Read Parquet jet shards: validation, in-memory arrays, Ray Data datasets and torch batches.

Two ways to get batches, one decoding path (`decode_table`):
- `ray_batches(ds_or_shard, ...)`: through Ray Data, from a `ray.data.Dataset` or from the
  `DataIterator` that `ray.train.get_dataset_shard` returns inside a Ray Train worker;
- `ArrayLoader`: in-process from arrays already in memory (fine-tunes on small label budgets).
Both yield `JetBatch`es whose features are aligned by name to the model's feature list (features
the data lacks are zero), so a backbone pre-trained on one dataset reads another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysearch.batch import JetBatch
from raysearch.errors import fail
from raysearch.schema import (DatasetInfo, Manifest, decode_particles, file_sha256,
                              info_from_schema)


@dataclass
class Split:
    """One validated split of a dataset on disk."""

    path: Path
    manifest: Manifest

    @property
    def info(self) -> DatasetInfo:
        return self.manifest.info

    @property
    def files(self) -> list[str]:
        return [str(self.path / f["name"]) for f in self.manifest.files]

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def read_table(self) -> pa.Table:
        tables = []
        for f in self.files:
            try:
                tables.append(pq.read_table(f))
            except (pa.ArrowInvalid, OSError) as err:
                fail(f"{f}: unreadable Parquet shard ({str(err).splitlines()[0]})")
        return pa.concat_tables(tables)

    def load_arrays(self) -> dict[str, np.ndarray]:
        """All jets of the split in memory: particles, n_particles, label, jet."""
        return table_to_arrays(self.read_table(), self.info)

    def ray_dataset(self):
        """The split as a `ray.data.Dataset` (lazy; reading scales out with the cluster)."""
        import ray.data
        from raysearch.ray_env import ensure_ray

        ensure_ray()
        return ray.data.read_parquet(self.files, shuffle=None)


def open_split(root: str | Path, dataset: str, split: str, verify_checksums: bool = False) -> Split:
    """Open `<root>/<dataset>/<split>`, checking the manifest against every shard.

    Checks that each listed shard exists, has the listed size and row count and a raysearch schema
    matching the manifest; with `verify_checksums` also the SHA-256 of each file. Errors name the file.
    """
    path = Path(root) / dataset / split
    if not path.is_dir():
        fail(f"{path}: no such split (expected <root>/<dataset>/<split> with Parquet shards; "
             f"simulate with `python -m data_prep.simulate` or convert with `python -m data_prep.convert`)")
    manifest = Manifest.read(path)
    if not manifest.files:
        fail(f"{path / 'manifest.json'}: lists no shards")
    rows = 0
    for entry in manifest.files:
        f = path / entry["name"]
        if not f.is_file():
            fail(f"{f}: shard listed in the manifest is missing")
        if f.stat().st_size != entry["bytes"]:
            fail(f"{f}: size {f.stat().st_size} bytes, manifest says {entry['bytes']} (truncated or rewritten?)")
        try:
            meta = pq.read_metadata(f)
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as err:
            fail(f"{f}: not a readable Parquet file ({str(err).splitlines()[0]})")
        info = info_from_schema(schema, str(f))
        if info != manifest.info:
            fail(f"{f}: its metadata (dataset {info.name!r}, features {list(info.particle_features)}) "
                 f"differs from the manifest's")
        if meta.num_rows != entry["rows"]:
            fail(f"{f}: {meta.num_rows} rows, manifest says {entry['rows']}")
        if verify_checksums and file_sha256(f) != entry["sha256"]:
            fail(f"{f}: checksum differs from the manifest (corrupt shard)")
        rows += meta.num_rows
    if rows != manifest.rows:
        fail(f"{path / 'manifest.json'}: shards hold {rows} rows, manifest says {manifest.rows}")
    return Split(path, manifest)


def table_to_arrays(table: pa.Table, info: DatasetInfo) -> dict[str, np.ndarray]:
    jet = np.stack([table.column(n).to_numpy() for n in info.jet_features], axis=1) \
        if info.jet_features else np.zeros((table.num_rows, 0), np.float32)
    return {
        "particles": decode_particles(table.column("particles"), info.max_particles, info.n_features),
        "n_particles": table.column("n_particles").to_numpy(),
        "label": table.column("label").to_numpy(),
        "jet": jet.astype(np.float32, copy=False),
    }


class FeatureMap:
    """Select and order particle features by name; features the source lacks become zero."""

    def __init__(self, source: Sequence[str], target: Sequence[str] | None = None):
        self.source, self.target = tuple(source), tuple(target or source)
        self.identity = self.source == self.target
        self.index = [self.source.index(n) if n in self.source else -1 for n in self.target]
        if all(i < 0 for i in self.index):
            fail(f"features: the data has {list(self.source)}, the model expects {list(self.target)}; "
                 f"they share no feature")

    def __call__(self, particles: np.ndarray) -> np.ndarray:
        if self.identity:
            return particles
        out = np.zeros(particles.shape[:-1] + (len(self.target),), dtype=np.float32)
        for j, i in enumerate(self.index):
            if i >= 0:
                out[..., j] = particles[..., i]
        return out


def arrays_to_batch(particles: np.ndarray, n_particles: np.ndarray, label: np.ndarray,
                    jet: np.ndarray, fmap: FeatureMap | None = None) -> JetBatch:
    # Drop the padding columns no jet of this batch uses: attention cost grows with the square of
    # the slot count, and outputs do not depend on padding (tests/test_model.py checks that).
    width = max(int(np.max(n_particles, initial=0)), 1)
    particles = particles[:, :width]
    if fmap is not None:
        particles = fmap(particles)
    n = torch.from_numpy(np.asarray(n_particles, dtype=np.int64))
    mask = torch.arange(particles.shape[1]).unsqueeze(0) < n.unsqueeze(1)
    return JetBatch(torch.from_numpy(np.array(particles, dtype=np.float32, copy=True)), mask,
                    torch.from_numpy(np.asarray(label, dtype=np.int64)),
                    torch.from_numpy(np.array(jet, dtype=np.float32, copy=True)))


def decode_table(table: pa.Table, info: DatasetInfo, fmap: FeatureMap | None = None) -> JetBatch:
    a = table_to_arrays(table, info)
    return arrays_to_batch(a["particles"], a["n_particles"], a["label"], a["jet"], fmap)


def _collate_class():
    from ray.data.collate_fn import ArrowBatchCollateFn

    class JetCollate(ArrowBatchCollateFn):
        """Arrow batch -> JetBatch (a plain function collate gets object arrays; see RAY.md)."""

        def __init__(self, info: DatasetInfo, fmap: FeatureMap | None):
            self.info, self.fmap = info, fmap

        def __call__(self, batch: pa.Table) -> JetBatch:
            return decode_table(batch, self.info, self.fmap)

    return JetCollate


def ray_batches(source, info: DatasetInfo, batch_size: int, shuffle_buffer: int | None = None,
                seed: int | None = None, features: Sequence[str] | None = None,
                drop_last: bool = False, prefetch_batches: int = 2) -> Iterator[JetBatch]:
    """Batches from a Ray Data `Dataset` or a Train worker's `DataIterator`.

    `shuffle_buffer` enables Ray Data's local shuffle (rows mixed within a buffer of that size).
    """
    collate = _collate_class()(info, FeatureMap(info.particle_features, features))
    return source.iter_torch_batches(batch_size=batch_size, collate_fn=collate, device="cpu",
                                     drop_last=drop_last, local_shuffle_buffer_size=shuffle_buffer,
                                     local_shuffle_seed=seed, prefetch_batches=prefetch_batches)


class ArrayLoader:
    """In-process batches from arrays in memory; reshuffled every epoch by a seeded generator."""

    def __init__(self, arrays: dict[str, np.ndarray], info: DatasetInfo, batch_size: int,
                 shuffle: bool = True, seed: int = 0, features: Sequence[str] | None = None,
                 drop_last: bool = False):
        self.arrays, self.info, self.batch_size = arrays, info, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.fmap = FeatureMap(info.particle_features, features)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = len(self.arrays["label"])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[JetBatch]:
        n = len(self.arrays["label"])
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for i in range(0, stop, self.batch_size):
            idx = np.sort(order[i:i + self.batch_size]) if not self.shuffle else order[i:i + self.batch_size]
            a = self.arrays
            yield arrays_to_batch(a["particles"][idx], a["n_particles"][idx], a["label"][idx],
                                  a["jet"][idx], self.fmap)


def subset(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in arrays.items()}


def feature_stats(particles: np.ndarray, n_particles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over real particles (for standardisation)."""
    mask = np.arange(particles.shape[1])[None] < np.asarray(n_particles)[:, None]
    real = particles[mask].astype(np.float64)
    return real.mean(0).astype(np.float32), real.std(0).astype(np.float32)
