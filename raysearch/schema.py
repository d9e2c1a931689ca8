"""One Parquet schema for every jet dataset, its file metadata, and the per-split manifest.

A row is one jet:
- `particles`: fixed-size binary holding a (max_particles, n_features) float32 C-order array,
  zero-padded. Fixed-size binary was chosen by measurement (benchmarks/data_loading.py prints
  both): it decodes with one `np.frombuffer` per batch, several times faster than a fixed-size
  list column whose values Arrow and Ray Data handle element-wise.
- `n_particles`: int32, real particles come first; slots >= n_particles are padding.
- `label`: int32 class index into `label_names`.
- one float32 column per jet feature (`jet_pt`, `jet_eta`, ...).

The file metadata key `raysearch` holds `DatasetInfo` as JSON (feature names, label names, dataset
name, schema version, provenance). Each split directory holds `part-NNNNN.parquet` shards and a
`manifest.json` with row and class counts, per-file rows and checksums, and a content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raysearch.errors import fail

SCHEMA_VERSION = 1
METADATA_KEY = b"raysearch"
MANIFEST_NAME = "manifest.json"

# Per-particle features of JetClass-like data (simulated JetClass, converted JetClass ROOT and the
# simulated top-tagging sample). `deta` follows JetClass: (eta_p - eta_jet) * sign(eta_jet).
KINEMATIC_FEATURES = ("deta", "dphi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r")
PID_FEATURES = ("charge", "is_charged_hadron", "is_neutral_hadron", "is_photon",
                "is_electron", "is_muon")
JETCLASS_FEATURES = KINEMATIC_FEATURES + PID_FEATURES
# JetNet-style particles: relative coordinates and relative pT, as in the JetNet files.
JETNET_FEATURES = ("etarel", "phirel", "ptrel")

JET_FEATURES = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_mass", "jet_sdmass",
                "jet_nparticles")
JETNET_JET_FEATURES = ("jet_pt", "jet_eta", "jet_mass", "jet_nparticles")

JETCLASS_LABELS = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
TOP_LABELS = ("QCD", "top")
JETNET_LABELS = ("g", "q", "t", "w", "z")


@dataclass(frozen=True)
class DatasetInfo:
    """What a shard holds; stored in every shard's Parquet metadata and in the manifest."""

    name: str
    """Dataset name, e.g. `jetclass`, `top_tagging`, `jetnet`."""
    particle_features: tuple[str, ...]
    """Names of the per-particle features, in the order of the last array axis."""
    max_particles: int
    """Number of particle slots per jet (real particles first, then zero padding)."""
    label_names: tuple[str, ...]
    """Class names; `label` indexes this tuple."""
    jet_features: tuple[str, ...] = JET_FEATURES
    """Names of the jet-level float32 columns."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Generator settings or source files the data came from."""
    schema_version: int = SCHEMA_VERSION
    """Version of this layout; readers refuse other versions."""

    @property
    def n_features(self) -> int:
        return len(self.particle_features)

    @property
    def particle_bytes(self) -> int:
        return self.max_particles * self.n_features * 4

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetInfo":
        return cls(name=d["name"], particle_features=tuple(d["particle_features"]),
                   max_particles=int(d["max_particles"]), label_names=tuple(d["label_names"]),
                   jet_features=tuple(d["jet_features"]), provenance=dict(d.get("provenance", {})),
                   schema_version=int(d["schema_version"]))

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field("particles", pa.binary(self.particle_bytes)),
                  pa.field("n_particles", pa.int32()), pa.field("label", pa.int32())]
        fields += [pa.field(name, pa.float32()) for name in self.jet_features]
        return pa.schema(fields, metadata={METADATA_KEY: self.to_json().encode()})


def make_table(info: DatasetInfo, particles: np.ndarray, n_particles: np.ndarray,
               labels: np.ndarray, jet: np.ndarray) -> pa.Table:
    """Build an Arrow table in the common schema from numpy arrays.

    particles: (n, max_particles, n_features) float32; jet: (n, len(info.jet_features)).
    """
    n = len(labels)
    expected = (n, info.max_particles, info.n_features)
    if particles.shape != expected:
        fail(f"{info.name}: particles have shape {particles.shape}, expected {expected}")
    if jet.shape != (n, len(info.jet_features)):
        fail(f"{info.name}: jet features have shape {jet.shape}, expected {(n, len(info.jet_features))}")
    buf = pa.py_buffer(np.ascontiguousarray(particles, dtype=np.float32).tobytes())
    cols: dict[str, pa.Array] = {
        "particles": pa.FixedSizeBinaryArray.from_buffers(pa.binary(info.particle_bytes), n, [None, buf]),
        "n_particles": pa.array(np.asarray(n_particles, dtype=np.int32)),
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
    }
    for i, name in enumerate(info.jet_features):
        cols[name] = pa.array(np.asarray(jet[:, i], dtype=np.float32))
    return pa.Table.from_pydict(cols, schema=info.arrow_schema())


def decode_particles(column: pa.Array | pa.ChunkedArray, max_particles: int,
                     n_features: int) -> np.ndarray:
    """Zero-copy view of a fixed-size-binary particles column as (n, max_particles, n_features)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    width = max_particles * n_features * 4
    data = column.buffers()[1]
    flat = np.frombuffer(data, dtype=np.float32, count=(column.offset + len(column)) * width // 4)
    return flat[column.offset * width // 4:].reshape(len(column), max_particles, n_features)


def table_fingerprint(table: pa.Table) -> str:
    """Hash of a table's content (values, not the file encoding)."""
    h = hashlib.sha256()
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        h.update(name.encode())
        for buf in col.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    return h.hexdigest()


def info_from_schema(schema: pa.Schema, where: str) -> DatasetInfo:
    """Read and check the DatasetInfo stored in a Parquet schema; `where` names the file."""
    meta = schema.metadata or {}
    if METADATA_KEY not in meta:
        fail(f"{where}: not a raysearch shard (no '{METADATA_KEY.decode()}' key in the Parquet metadata)")
    try:
        info = DatasetInfo.from_dict(json.loads(meta[METADATA_KEY]))
    except (KeyError, ValueError, TypeError) as err:
        fail(f"{where}: unreadable raysearch metadata ({err})")
    if info.schema_version != SCHEMA_VERSION:
        fail(f"{where}: schema version {info.schema_version}, this raysearch reads version {SCHEMA_VERSION}")
    expected = info.arrow_schema()
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        fail(f"{where}: columns {schema.names} with types "
             f"{[str(t) for t in schema.types]} do not match the raysearch schema {expected.names}")
    return info


@dataclass
class Manifest:
    """Summary of one split: written after its shards, checked by every reader."""

    dataset: str
    split: str
    rows: int
    class_counts: dict[str, int]
    info: DatasetInfo
    files: list[dict[str, Any]]
    """One entry per shard: `name`, `rows`, `bytes`, `sha256` of the file."""
    fingerprint: str
    """Hash of the shards' content; changes whenever the data changes."""

    def write(self, split_dir: Path) -> None:
        d = asdict(self)
        d["info"] = json.loads(self.info.to_json())
        tmp = split_dir / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(d, indent=1, sort_keys=True))
        tmp.replace(split_dir / MANIFEST_NAME)

    @classmethod
    def read(cls, split_dir: Path) -> "Manifest":
        path = Path(split_dir) / MANIFEST_NAME
        if not path.is_file():
            fail(f"{path}: missing manifest (is {split_dir} a raysearch split written by data_prep?)")
        try:
            d = json.loads(path.read_text())
            return cls(dataset=d["dataset"], split=d["split"], rows=int(d["rows"]),
                       class_counts={k: int(v) for k, v in d["class_counts"].items()},
                       info=DatasetInfo.from_dict(d["info"]), files=list(d["files"]),
                       fingerprint=d["fingerprint"])
        except (KeyError, ValueError, TypeError) as err:
            fail(f"{path}: malformed manifest ({err.__class__.__name__}: {err})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
