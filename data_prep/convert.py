"""Convert the real jet datasets to raysearch Parquet shards.

    python -m data_prep.convert jetclass    --out data --split train  JetClass/train/*.root
    python -m data_prep.convert top_tagging --out data --split train  train.h5
    python -m data_prep.convert jetnet      --out data --split train  g.hdf5 q.hdf5 t.hdf5 w.hdf5 z.hdf5
    python -m data_prep.convert omnilearned --out data --split train --name mydata  <root>/mydata/train/*.h5

Each input file is converted by one Ray Data task (`map_batches` over the file list), so a cluster
converts many files in parallel; the layouts are those of `shared/reference/FORMATS.md`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from data_prep.features import jetclass_features_batch
from raysearch.errors import UserError, cli_main, fail
from raysearch.schema import (JET_FEATURES, JETCLASS_FEATURES, JETCLASS_LABELS, JETNET_FEATURES,
                              JETNET_JET_FEATURES, JETNET_LABELS, KINEMATIC_FEATURES, TOP_LABELS,
                              DatasetInfo, make_table)

JETCLASS_PART = ("part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi", "part_charge",
                 "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron",
                 "part_isMuon")
JETCLASS_JET = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass")
JETCLASS_LABEL_BRANCHES = tuple(f"label_{c}" for c in JETCLASS_LABELS)
TOP_MAX = 200
OMNI_JET_FEATURES = ("jet_pt", "jet_energy", "jet_mass", "jet_nparticles")


def _jet_mass(pt, eta, energy):
    p2 = (pt * np.cosh(eta)) ** 2
    return np.sqrt(np.clip(energy ** 2 - p2, 0, None))


# --- JetClass ROOT -------------------------------------------------------------------------------

def jetclass_info(max_particles: int, sources: list[str]) -> DatasetInfo:
    return DatasetInfo("jetclass", JETCLASS_FEATURES, max_particles, JETCLASS_LABELS, JET_FEATURES,
                       provenance={"source": "JetClass ROOT", "files": sources})


def convert_jetclass_file(path: str, max_particles: int = 128) -> dict[str, np.ndarray]:
    import awkward as ak
    import uproot

    try:
        f = uproot.open(path)
    except Exception as err:  # uproot raises many kinds for a non-ROOT file
        fail(f"{path}: not a readable ROOT file ({err.__class__.__name__}: {err})")
    if "tree" not in f:
        fail(f"{path}: no TTree named 'tree' (found {list(f.keys())})")
    tree = f["tree"]
    needed = JETCLASS_PART + JETCLASS_JET + JETCLASS_LABEL_BRANCHES
    missing = [b for b in needed if b not in tree.keys()]
    if missing:
        fail(f"{path}: missing JetClass branches {missing}")
    arr = tree.arrays(list(needed), library="ak")
    width = int(ak.max(ak.num(arr["part_px"]))) if len(arr) else 1
    pad = lambda name: ak.to_numpy(ak.fill_none(ak.pad_none(arr[name], width, clip=True), 0)).astype(np.float64)
    px, py, pz, e = (pad(b) for b in ("part_px", "part_py", "part_pz", "part_energy"))
    valid = ak.to_numpy(ak.fill_none(ak.pad_none(ak.ones_like(arr["part_px"]), width, clip=True), 0)) > 0
    is_e, is_mu, is_ph = pad("part_isElectron") > 0, pad("part_isMuon") > 0, pad("part_isPhoton") > 0
    pdg = np.where(is_e, 11, np.where(is_mu, 13, np.where(is_ph, 22, 211)))
    jet = {b: ak.to_numpy(arr[b]).astype(np.float64) for b in JETCLASS_JET}
    feats, n = jetclass_features_batch(px, py, pz, e, valid, pad("part_charge"), pdg, jet["jet_pt"],
                                       jet["jet_eta"], jet["jet_phi"], jet["jet_energy"], max_particles)
    # Labels come as float, bool and int32 branches: cast each to int before taking the one set.
    onehot = np.stack([ak.to_numpy(arr[b]).astype(np.int64) for b in JETCLASS_LABEL_BRANCHES], axis=1)
    if np.any(onehot.sum(axis=1) != 1):
        fail(f"{path}: some jets do not have exactly one label_* branch set")
    jets = np.stack([jet["jet_pt"], jet["jet_eta"], jet["jet_phi"], jet["jet_energy"],
                     _jet_mass(jet["jet_pt"], jet["jet_eta"], jet["jet_energy"]), jet["jet_sdmass"],
                     jet["jet_nparticles"]], axis=1).astype(np.float32)
    return {"particles": feats, "n_particles": n, "label": onehot.argmax(axis=1), "jet": jets}


# --- Top Tagging reference h5 ---------------------------------------------------------------------

def top_tagging_info(max_particles: int, sources: list[str]) -> DatasetInfo:
    return DatasetInfo("top_tagging", JETCLASS_FEATURES, max_particles, TOP_LABELS, JET_FEATURES,
                       provenance={"source": "Top Tagging reference h5 (four-momenta only: charge and "
                                             "particle-type features are zero)", "files": sources})


def convert_top_tagging_file(path: str, max_particles: int = TOP_MAX) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_hdf(path, key="table")
    except (KeyError, OSError, ValueError, TypeError) as err:
        fail(f"{path}: not a Top Tagging h5 with key 'table' ({err.__class__.__name__}: {err})")
    cols = {c: [f"{c}_{i}" for i in range(TOP_MAX)] for c in ("E", "PX", "PY", "PZ")}
    missing = [c for group in cols.values() for c in group if c not in df.columns] + \
        [c for c in ("is_signal_new",) if c not in df.columns]
    if missing:
        fail(f"{path}: missing Top Tagging columns {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    e, px, py, pz = (df[cols[c]].to_numpy(np.float64) for c in ("E", "PX", "PY", "PZ"))
    valid = e > 0
    sx, sy, sz, se = px.sum(1), py.sum(1), pz.sum(1), e.sum(1)
    jet_pt = np.hypot(sx, sy)
    jet_eta = np.arcsinh(sz / np.where(jet_pt > 0, jet_pt, 1))
    jet_phi = np.arctan2(sy, sx)
    feats, n = jetclass_features_batch(px, py, pz, e, valid, None, None, jet_pt, jet_eta, jet_phi,
                                       se, max_particles)
    mass = np.sqrt(np.clip(se ** 2 - sx ** 2 - sy ** 2 - sz ** 2, 0, None))
    # No soft-drop mass without reclustering; the reference files do not carry one: store -1.
    jets = np.stack([jet_pt, jet_eta, jet_phi, se, mass, np.full_like(mass, -1.0),
                     valid.sum(1)], axis=1).astype(np.float32)
    return {"particles": feats, "n_particles": n,
            "label": df["is_signal_new"].to_numpy().astype(np.int64), "jet": jets}


# --- JetNet h5 -----------------------------------------------------------------------------------

def jetnet_info(max_particles: int, sources: list[str]) -> DatasetInfo:
    return DatasetInfo("jetnet", JETNET_FEATURES, max_particles, JETNET_LABELS, JETNET_JET_FEATURES,
                       provenance={"source": "JetNet h5", "files": sources})


def convert_jetnet_file(path: str, max_particles: int | None = None) -> dict[str, np.ndarray]:
    import h5py

    stem = Path(path).stem.rstrip("0123456789")
    if stem not in JETNET_LABELS:
        fail(f"{path}: the jet type is taken from the file name; expected one of "
             f"{[s + '.hdf5' for s in JETNET_LABELS]} (optionally with the particle count, g150.hdf5)")
    try:
        with h5py.File(path, "r") as f:
            for key in ("particle_features", "jet_features"):
                if key not in f:
                    fail(f"{path}: missing dataset '{key}' (found {list(f.keys())})")
            pf, jf = f["particle_features"][:], f["jet_features"][:]
    except OSError as err:
        fail(f"{path}: not a readable HDF5 file ({err})")
    if pf.ndim != 3 or pf.shape[2] != 4:
        fail(f"{path}: particle_features has shape {pf.shape}, expected (N, 30|150, 4)")
    if jf.ndim != 2 or jf.shape[1] != 4:
        fail(f"{path}: jet_features has shape {jf.shape}, expected (N, 4)")
    m = max_particles or pf.shape[1]
    real = pf[..., 3] > 0
    order = np.argsort(~real, axis=1, kind="stable")[:, :m]  # real particles first, order kept
    feats = np.take_along_axis(pf[..., :3], order[..., None], axis=1).astype(np.float32)
    kept = np.take_along_axis(real, order, axis=1)
    feats[~kept] = 0
    return {"particles": feats, "n_particles": kept.sum(1),
            "label": np.full(len(pf), JETNET_LABELS.index(stem)), "jet": jf.astype(np.float32)}


# --- OmniLearned h5 ------------------------------------------------------------------------------

def omnilearned_info(name: str, max_particles: int, n_classes: int, sources: list[str]) -> DatasetInfo:
    return DatasetInfo(name, KINEMATIC_FEATURES, max_particles,
                       tuple(f"class{i}" for i in range(n_classes)), OMNI_JET_FEATURES,
                       provenance={"source": "OmniLearned h5", "files": sources})


def convert_omnilearned_file(path: str, max_particles: int | None = None) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for key in ("data", "pid"):
                if key not in f:
                    fail(f"{path}: missing dataset '{key}' (found {list(f.keys())})")
            data, pid = f["data"][:], f["pid"][:]
    except OSError as err:
        fail(f"{path}: not a readable HDF5 file ({err})")
    if data.ndim != 3 or data.shape[2] < 4:
        fail(f"{path}: data has shape {data.shape}, expected (N, M, F>=4): deta, dphi, log pT, log E, ...")
    m = max_particles or data.shape[1]
    real = data[..., 2] != 0  # OmniLearned's padding convention
    deta, dphi = data[..., 0].astype(np.float64), data[..., 1].astype(np.float64)
    pt, e = np.where(real, np.exp(data[..., 2]), 0.0), np.where(real, np.exp(data[..., 3]), 0.0)
    # Jet frame: momenta relative to the jet axis (only relative coordinates are stored).
    px, py, pz = pt * np.cos(dphi), pt * np.sin(dphi), pt * np.sinh(deta)
    jet_pt, jet_e = np.hypot(px.sum(1), py.sum(1)), e.sum(1)
    mass = np.sqrt(np.clip(jet_e ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2 - pz.sum(1) ** 2, 0, None))
    feats, n = jetclass_features_batch(px, py, pz, e, real, None, None, jet_pt, np.zeros_like(jet_pt),
                                       np.zeros_like(jet_pt), jet_e, m)
    # Keep the stored deta/dphi exactly (the jet-frame rebuild reproduces them only approximately).
    order = np.argsort(-np.where(real, pt, -1.0), axis=1, kind="stable")[:, :m]
    ok = np.arange(m)[None] < n[:, None]
    feats[..., 0] = np.where(ok, np.take_along_axis(deta, order, 1), 0)
    feats[..., 1] = np.where(ok, np.take_along_axis(dphi, order, 1), 0)
    feats[..., 6] = np.hypot(feats[..., 0], feats[..., 1])
    jets = np.stack([jet_pt, jet_e, mass, real.sum(1)], axis=1).astype(np.float32)
    return {"particles": feats[..., :len(KINEMATIC_FEATURES)], "n_particles": n,
            "label": pid.astype(np.int64), "jet": jets}


CONVERTERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "jetclass": convert_jetclass_file, "top_tagging": convert_top_tagging_file,
    "jetnet": convert_jetnet_file, "omnilearned": convert_omnilearned_file,
}


def convert(kind: str, files: list[str], out: str | Path, split: str, max_particles: int | None = None,
            name: str | None = None, rows_per_shard: int = 2000):
    """Convert `files` of one dataset kind into `<out>/<dataset>/<split>/` through Ray Data."""
    if kind not in CONVERTERS:
        fail(f"kind: unknown dataset kind {kind!r}, expected one of {sorted(CONVERTERS)}")
    if not files:
        fail("files: give at least one input file")
    for f in files:
        if not Path(f).is_file():
            fail(f"{f}: no such file")
    files = [str(Path(f).resolve()) for f in files]
    if kind == "jetclass":
        info = jetclass_info(max_particles or 128, files)
    elif kind == "top_tagging":
        info = top_tagging_info(max_particles or TOP_MAX, files)
    elif kind == "jetnet":
        probe = CONVERTERS[kind](files[0], max_particles)
        info = jetnet_info(probe["particles"].shape[1], files)
    else:
        probe = CONVERTERS[kind](files[0], max_particles)
        n_classes = int(max(CONVERTERS[kind](f, max_particles)["label"].max() for f in files)) + 1
        info = omnilearned_info(name or Path(files[0]).parents[1].name, probe["particles"].shape[1],
                                n_classes, files)

    from data_prep.shards import write_split
    from raysearch.ray_env import ensure_ray
    import ray.data

    ensure_ray()
    converter, mp = CONVERTERS[kind], max_particles

    def convert_batch(batch: dict) -> pa.Table:
        tables = []
        for path in batch["path"]:
            a = converter(str(path), mp)
            tables.append(make_table(info, a["particles"], a["n_particles"], a["label"], a["jet"]))
        return pa.concat_tables(tables)

    ds = ray.data.from_items([{"path": f} for f in files]).map_batches(
        convert_batch, batch_size=1, batch_format="pyarrow")
    return write_split(out, info, split, ds, rows_per_shard)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.convert", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=sorted(CONVERTERS))
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default="data")
    ap.add_argument("--split", required=True, choices=("train", "val", "test"))
    ap.add_argument("--max-particles", type=int, default=None)
    ap.add_argument("--name", default=None, help="dataset name (omnilearned; default: from the path)")
    ap.add_argument("--address", default=None, help="Ray cluster address")
    args = ap.parse_args(argv)
    from raysearch.ray_env import ensure_ray
    ensure_ray(args.address)
    try:
        m = convert(args.kind, args.files, args.out, args.split, args.max_particles, args.name)
    except Exception as err:
        # Errors raised inside Ray Data tasks arrive wrapped; surface our one-line message.
        cause = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            msg = str(err).strip().splitlines()
            ue = [l for l in msg if "UserError:" in l]
            if ue:
                raise UserError(ue[-1].split("UserError:", 1)[1].strip()) from None
            raise
        raise cause from None
    print(f"{Path(args.out) / m.dataset / args.split}: {m.rows} jets in {len(m.files)} shard(s), "
          f"classes {m.class_counts}, fingerprint {m.fingerprint[:12]}")
    return 0


run = cli_main(main)

if __name__ == "__main__":
    raise SystemExit(run())
