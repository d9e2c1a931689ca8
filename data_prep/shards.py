"""Write one split of a dataset as Parquet shards through Ray Data, atomically, with its manifest."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysearch.schema import (DatasetInfo, Manifest, file_sha256, info_from_schema, make_table,
                              table_fingerprint)

DEFAULT_ROWS_PER_SHARD = 2000
_RAY_NAME = re.compile(r"_(\d+)-(\d+)\.parquet$")


def write_split(root: str | Path, info: DatasetInfo, split: str, table,
                rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> Manifest:
    """Write `table` (an Arrow table or a Ray Dataset of them) to `<root>/<info.name>/<split>/part-NNNNN.parquet` plus `manifest.json`.

    Shards are written by Ray Data into a temporary folder that replaces the split only when
    complete, so a crash never leaves a half-written split that looks finished.
    """
    from raysearch.ray_env import ensure_ray
    import ray.data

    ensure_ray()
    split_dir = Path(root) / info.name / split
    tmp = split_dir.parent / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(table, pa.Table):
        table = table.replace_schema_metadata(info.arrow_schema().metadata)
        ds = ray.data.from_arrow([table.slice(i, rows_per_shard)
                                  for i in range(0, max(table.num_rows, 1), rows_per_shard)])
    else:
        ds = table
    ds.write_parquet(str(tmp), max_rows_per_file=rows_per_shard,
                                              compression="snappy")
    # Ray names files <uuid>_<task>-<block>.parquet; give them stable names in write order.
    written = sorted((p for p in tmp.iterdir() if p.suffix == ".parquet"),
                     key=lambda p: tuple(int(x) for x in _RAY_NAME.search(p.name).groups()))
    files, tables = [], []
    for k, p in enumerate(written):
        final = tmp / f"part-{k:05d}.parquet"
        p.rename(final)
        t = pq.read_table(final)
        info_from_schema(t.schema, str(final))
        tables.append(t)
        files.append({"name": final.name, "rows": t.num_rows, "bytes": final.stat().st_size,
                      "sha256": file_sha256(final)})
    if not tables:
        raise RuntimeError(f"{split_dir}: Ray Data wrote no shard")
    content = pa.concat_tables(tables)
    labels = content.column("label").to_numpy()
    manifest = Manifest(
        dataset=info.name, split=split, rows=content.num_rows,
        class_counts={name: int(np.sum(labels == i)) for i, name in enumerate(info.label_names)},
        info=info, files=files, fingerprint=table_fingerprint(content))
    manifest.write(tmp)
    if split_dir.exists():
        shutil.rmtree(split_dir)
    tmp.rename(split_dir)
    return manifest


def write_arrays(root: str | Path, info: DatasetInfo, split: str, arrays: dict[str, np.ndarray],
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> Manifest:
    """`write_split` from numpy arrays `particles`, `n_particles`, `label`, `jet`."""
    table = make_table(info, arrays["particles"], arrays["n_particles"], arrays["label"], arrays["jet"])
    return write_split(root, info, split, table, rows_per_shard)
