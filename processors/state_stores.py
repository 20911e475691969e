"""Where a worker keeps the journeys of the partitions it owns.

``memory`` (the default) is a dict. ``rocksdict`` keeps them in a local RocksDB
(via the rocksdict package, extra ``touchpoint-pipeline[rocksdict]``) so a worker
can own more journeys than fit in memory. Either way the durable copy is the
compacted ``journey.store`` topic: the local store is rebuilt from it whenever a
partition is assigned, so a RocksDB directory is scratch space, wiped at start.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

__all__ = ["RocksStates", "open_state_store"]


class RocksStates(MutableMapping[str, bytes]):
    """Encoded journey states (:func:`schemas.journey.encode_state`) in a local RocksDB."""

    def __init__(self, path: Path) -> None:
        try:
            from rocksdict import Rdict
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ConfigError(
                "the rocksdict state store needs the rocksdict package: "
                "pip install 'touchpoint-pipeline[rocksdict]'"
            ) from exc
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self.path = path
        self._db: Any = Rdict(str(path))

    def __getitem__(self, key: str) -> bytes:
        raw = self._db.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return bytes(raw)

    def __setitem__(self, key: str, value: bytes) -> None:
        self._db[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        if self._db.get(key.encode()) is None:
            raise KeyError(key)
        del self._db[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self._db.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self._db.keys())

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def open_state_store(kind: str, directory: Path) -> MutableMapping[str, bytes]:
    """A fresh, empty state store of ``kind`` (``memory`` or ``rocksdict``)."""
    if kind == "memory":
        return {}
    if kind == "rocksdict":
        return RocksStates(directory)
    raise ConfigError(f"unknown state store {kind!r}: use memory or rocksdict")
