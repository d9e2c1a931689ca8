"""Content-addressed store of finished pre-trainings.

An entry's key is a hash of the mix, the pre-training config (everything that changes the result)
and the training data's fingerprint. An entry directory holds the saved model (backbone and heads)
and `entry.json` (config, metrics, compute spent). Entries are built in a temporary directory and
renamed into place, so a crash never leaves a half-written entry that looks complete; a per-key file
lock lets two processes (two sweeps) share a store without training the same key twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ENTRY_FILE = "entry.json"


def store_key(mix: dict[str, float], config: dict[str, Any], data_fingerprint: str) -> str:
    blob = json.dumps({"mix": mix, "config": config, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class StoreEntry:
    key: str
    path: Path
    record: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


class PretrainStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> StoreEntry | None:
        path = self.root / key
        f = path / ENTRY_FILE
        if not f.is_file():
            return None
        return StoreEntry(key, path, json.loads(f.read_text()))

    def put(self, key: str, model_dir: str | Path, record: dict[str, Any]) -> StoreEntry:
        """Store a finished pre-training atomically; if the key appeared meanwhile, keep that one."""
        existing = self.get(key)
        if existing is not None:
            return existing
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(model_dir, tmp / "model")
        record = dict(record, key=key, stored_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        try:
            os.rename(tmp, self.root / key)  # atomic; fails if the key exists already
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            existing = self.get(key)
            if existing is None:
                raise
            return existing
        return self.get(key)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive lock on one key across processes sharing the store's file system."""
        with open(self.root / f".{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def entries(self) -> list[StoreEntry]:
        return [e for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                for e in [self.get(p.name)] if e is not None]
