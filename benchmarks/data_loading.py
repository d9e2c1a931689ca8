"""Loader throughput: our Parquet shards through Ray Data vs the same jets in an h5 file via h5py.

    python benchmarks/data_loading.py [--jets 50000] [--batch 512]

Prints jets/s side by side (sequential and shuffled) with ratios, the two Arrow encodings we
considered for the particle array (fixed-size binary, chosen, vs fixed-size list), the shard size
per 1k jets, and how many times faster the loader is than the tiny model's training step consumes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysearch.schema import JET_FEATURES, JETCLASS_FEATURES, JETCLASS_LABELS, DatasetInfo


def synthetic_jets(n: int, m: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Jets with realistic padding (30-128 real particles) and smooth feature values."""
    rng = np.random.default_rng(seed)
    n_real = rng.integers(30, m + 1, n)
    p = rng.normal(size=(n, m, len(JETCLASS_FEATURES))).astype(np.float32)
    p[np.arange(m)[None] >= n_real[:, None]] = 0
    return {"particles": p, "n_particles": n_real.astype(np.int32),
            "label": rng.integers(0, 10, n).astype(np.int32),
            "jet": rng.normal(size=(n, len(JET_FEATURES))).astype(np.float32)}


def rate(fn, n_jets: int) -> float:
    t = time.perf_counter()
    fn()
    return n_jets / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jets", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    from data_prep.shards import write_arrays
    from raysearch.data import ArrayLoader, open_split, ray_batches
    from raysearch.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    arrays = synthetic_jets(args.jets)
    info = DatasetInfo("bench", JETCLASS_FEATURES, 128, JETCLASS_LABELS, JET_FEATURES)
    write_arrays(tmp, info, "train", arrays, rows_per_shard=5000)
    split = open_split(tmp, "bench", "train")
    size = sum(f["bytes"] for f in split.manifest.files)
    print(f"{args.jets} jets of (128, 13) float32 in {len(split.files)} shards: "
          f"{size / args.jets * 1000 / 2**20:.2f} MiB per 1k jets (snappy)")

    h5 = tmp / "bench.h5"
    with h5py.File(h5, "w") as f:
        f["particles"] = arrays["particles"]
        f["label"] = arrays["label"]

    from_parquet = split.ray_dataset()
    in_memory = split.ray_dataset().materialize()

    def ours(shuffle: bool, ds=from_parquet):
        for _ in ray_batches(ds, info, args.batch, shuffle_buffer=4 * args.batch if shuffle else None, seed=0):
            pass

    def h5_seq():
        with h5py.File(h5, "r") as f:
            for i in range(0, args.jets, args.batch):
                torch.from_numpy(f["particles"][i:i + args.batch])

    def h5_shuffled():
        order = np.random.default_rng(0).permutation(args.jets)
        with h5py.File(h5, "r") as f:
            for i in range(0, args.jets, args.batch):
                torch.from_numpy(f["particles"][np.sort(order[i:i + args.batch])])

    ours(False)  # warm-up epoch (worker start, caching)
    r = {"ours sequential": rate(lambda: ours(False), args.jets),
         "ours shuffled": rate(lambda: ours(True), args.jets),
         "ours materialized shuffled": rate(lambda: ours(True, in_memory), args.jets),
         "h5py sequential slices": rate(h5_seq, args.jets),
         "h5py shuffled index": rate(h5_shuffled, args.jets)}
    for k, v in r.items():
        print(f"{k:26s} {v:10.0f} jets/s")
    print(f"sequential: ours / h5py = {r['ours sequential'] / r['h5py sequential slices']:.2f}x; "
          f"shuffled: ours / h5py = {r['ours shuffled'] / r['h5py shuffled index']:.2f}x")

    # The encoding choice: decode the same particles from fixed-size binary vs fixed-size list.
    flat = arrays["particles"].reshape(args.jets, -1)
    width = flat.shape[1]
    binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width * 4), args.jets, [None, pa.py_buffer(flat.tobytes())])
    lists = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), width)
    for name, col in (("fixed_size_binary", binary), ("fixed_size_list", lists)):
        pq.write_table(pa.table({"p": col}), tmp / f"{name}.parquet", compression="snappy")

        def read(name=name):
            t = pq.read_table(tmp / f"{name}.parquet")
            c = t.column("p").combine_chunks()
            if name == "fixed_size_binary":
                np.frombuffer(c.buffers()[1], np.float32)
            else:
                c.flatten().to_numpy()
        print(f"pyarrow read+decode {name:18s} {rate(read, args.jets):10.0f} jets/s")

    # Model consumption: the tiny model's training step on the same batch size.
    from raysearch.model import JetModel, ModelConfig
    from raysearch.objectives import Mix, mix_loss

    torch.set_num_threads(2)
    loader = ArrayLoader(arrays, info, 64)
    batch = next(iter(loader))
    for mix in (Mix(cls=1), Mix(1, 1, 1)):
        model = JetModel(ModelConfig(size="tiny", features=JETCLASS_FEATURES, num_classes=10), mix.heads)
        opt = torch.optim.AdamW(model.parameters())

        def steps():
            for _ in range(5):
                loss = mix_loss(model, batch, mix).total
                opt.zero_grad()
                loss.backward()
                opt.step()
        steps()
        model_rate = rate(steps, 5 * 64)
        print(f"tiny model {mix.name:12s} consumes {model_rate:8.0f} jets/s; loader (shuffled) is "
              f"{r['ours shuffled'] / model_rate:.0f}x faster (goal >= 10x)")


if __name__ == "__main__":
    main()
