"""Simulate JetClass-like, top-tagging and JetNet-style jets with Pythia 8 + FastJet on Ray.

    python -m data_prep.simulate --sample jetclass --out data --per-class train=300,val=50,test=50 [--smear]

Work is split into chunks of jets of one class; each chunk is a Ray task with its own Pythia
instance and a seed derived from (seed, split, class, chunk), so identical settings give identical
shards on any cluster. Shards are written through Ray Data (`data_prep.shards`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.detector import DetectorResponse
from data_prep.samples import SAMPLES, Sample
from raysearch.errors import UserError, cli_main, fail
from raysearch.schema import DatasetInfo, Manifest

GENERATOR_VERSION = 1  # bump when the simulation changes so that cached samples are regenerated
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChunkResult:
    split: str
    class_index: int
    chunk: int
    arrays: dict
    seconds: float


def chunk_seed(seed: int, split: str, class_index: int, chunk: int) -> int:
    ss = np.random.SeedSequence([seed, SPLITS.index(split), class_index, chunk])
    return int(ss.generate_state(1)[0] % 900_000_000)


def _run_chunk(sample_name: str, split: str, class_index: int, chunk: int, n: int, seed: int,
               detector: DetectorResponse | None = None) -> ChunkResult:
    from data_prep.pythia_jets import generate_jets

    t0 = time.perf_counter()
    arrays = generate_jets(SAMPLES[sample_name], class_index, n, chunk_seed(seed, split, class_index, chunk),
                           detector=detector)
    return ChunkResult(split, class_index, chunk, arrays, time.perf_counter() - t0)


def dataset_info(sample: Sample, per_class: dict[str, int], seed: int,
                 detector: DetectorResponse | None = None) -> DatasetInfo:
    return DatasetInfo(
        name=sample.name, particle_features=sample.particle_features,
        max_particles=sample.max_particles, label_names=sample.label_names,
        jet_features=sample.jet_features,
        provenance={"generator": "pythia8mc+fastjet", "generator_version": GENERATOR_VERSION,
                    "ecm_gev": sample.ecm, "jet_pt_gev": list(sample.pt_range),
                    "max_abs_eta": sample.max_abs_eta, "jet_algorithm": "anti-kt R=0.8",
                    "mpi": sample.mpi, "seed": seed, "per_class": dict(per_class),
                    # Only when smeared, so particle-level samples cached before keep matching.
                    **({"detector": detector.as_dict()} if detector is not None else {}),
                    "processes": {p.label: list(p.settings) for p in sample.processes}})


def existing_matches(root: Path, info: DatasetInfo) -> bool:
    """True when every split already on disk was simulated with exactly these settings."""
    for split, n in info.provenance["per_class"].items():
        if n == 0:
            continue
        d = root / info.name / split
        if not (d / "manifest.json").is_file():
            return False
        try:
            if Manifest.read(d).info.provenance != info.provenance:
                return False
        except UserError:
            return False
    return True


def simulate(root: str | Path, sample_name: str, per_class: dict[str, int], seed: int = 1,
             chunk_size: int = 100, progress: bool = True, force: bool = False,
             smear: bool = False) -> dict[str, Manifest]:
    """Simulate `per_class[split]` jets of every class of the sample for each split; write shards.

    `smear` passes the particles through `data_prep.detector.DetectorResponse` before clustering.
    Returns the manifests. A sample already on disk with identical settings is reused (cached).
    """
    if sample_name not in SAMPLES:
        fail(f"--sample: unknown sample {sample_name!r}, expected one of {sorted(SAMPLES)}")
    for split, n in per_class.items():
        if split not in SPLITS:
            fail(f"per_class: unknown split {split!r}, expected {SPLITS}")
        if not isinstance(n, int) or n < 0:
            fail(f"per_class.{split}: expected a whole number >= 0, got {n!r}")
    sample = SAMPLES[sample_name]
    root = Path(root)
    detector = DetectorResponse() if smear else None
    info = dataset_info(sample, per_class, seed, detector)
    if not force and existing_matches(root, info):
        return {s: Manifest.read(root / sample.name / s) for s, n in per_class.items() if n}

    import ray
    from raysearch.ray_env import ensure_ray
    from data_prep.shards import write_arrays

    ensure_ray()
    remote = ray.remote(num_cpus=1)(_run_chunk)
    refs = []
    for split, n in per_class.items():
        for ci in range(len(sample.processes)):
            for chunk, start in enumerate(range(0, n, chunk_size)):
                refs.append(remote.remote(sample.name, split, ci, chunk, min(chunk_size, n - start), seed,
                                          detector))
    total = sum(per_class.values()) * len(sample.processes)
    results: list[ChunkResult] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"simulating {sample.name}", unit="jet", smoothing=0.1)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        r = ray.get(done[0])
        results.append(r)
        if bar is not None:
            bar.update(len(r.arrays["label"]))
    if bar is not None:
        bar.close()

    manifests = {}
    for split, n in per_class.items():
        if n == 0:
            continue
        parts = sorted((r for r in results if r.split == split), key=lambda r: (r.class_index, r.chunk))
        arrays = {k: np.concatenate([r.arrays[k] for r in parts]) for k in ("particles", "n_particles", "label", "jet")}
        for ci, proc in enumerate(sample.processes):
            got = int(np.sum(arrays["label"] == ci))
            if got < n:
                raise RuntimeError(f"{sample.name}/{proc.label}: only {got} of {n} jets passed the "
                                   f"selection within the event limit")
        manifests[split] = write_arrays(root, info, split, arrays)
    _print_rates(sample, results)
    return manifests


def _print_rates(sample: Sample, results: list[ChunkResult]) -> None:
    rates = []
    for ci, proc in enumerate(sample.processes):
        jets = sum(len(r.arrays["label"]) for r in results if r.class_index == ci)
        secs = sum(r.seconds for r in results if r.class_index == ci)
        rates.append(f"{proc.label} {jets / max(secs, 1e-9):.1f}")
    print(f"{sample.name}: jets per CPU-second by class: " + ", ".join(rates))


def parse_per_class(text: str) -> dict[str, int]:
    out = {}
    for item in text.split(","):
        if "=" not in item:
            fail(f"--per-class: expected split=count pairs like train=300,val=50, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            fail(f"--per-class: count for {k.strip()!r} must be a whole number, got {v!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.simulate", description=__doc__.split("\n")[0])
    ap.add_argument("--sample", required=True, choices=sorted(SAMPLES))
    ap.add_argument("--out", default="data", help="dataset root folder (default: data)")
    ap.add_argument("--per-class", default="train=300,val=50,test=50",
                    help="jets per class and split, e.g. train=300,val=50,test=50")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=100, help="jets per Ray task")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    ap.add_argument("--force", action="store_true", help="simulate again even if cached")
    ap.add_argument("--smear", action="store_true",
                    help="pass particles through a simple detector response (data_prep/detector.py)")
    args = ap.parse_args(argv)
    from raysearch.ray_env import ensure_ray
    ensure_ray(args.address)
    t0 = time.time()
    manifests = simulate(args.out, args.sample, parse_per_class(args.per_class), args.seed,
                         args.chunk_size, force=args.force, smear=args.smear)
    for split, m in manifests.items():
        print(f"{Path(args.out) / m.dataset / split}: {m.rows} jets, {len(m.files)} shard(s), "
              f"fingerprint {m.fingerprint[:12]}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
