"""A resumable on-disk store of bootstrap replicates.

Layout of the folder::

    bootstrap.json              manifest: format, version, input fingerprint, replicate settings, image grid
    full_data_map.npy           the full-data MAP image every replicate starts from (z, y, x)
    replicates/rep_000007.json  the replicate's draw summary (weights, prior factor, objective, time)
    replicates/rep_000007.npy   the replicate image (z, y, x), float32; its presence marks the replicate done

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so an interrupted run leaves either a complete replicate or
none. A replicate is identified by its index; writing it twice writes the same content to the same
name, so nothing is ever counted twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from petuq_sirf.bootstrap.replicate import BootstrapConfig, ReplicateResult
from petuq_sirf.io.atomic import atomic_write

MANIFEST = "bootstrap.json"
FORMAT = "petuq_sirf posterior bootstrap"
VERSION = 1


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


class ReplicateStore:
    """Replicates of one bootstrap run in ``folder``.

    Open with :meth:`open`: a new folder gets a manifest; an existing one must have been written for
    the same input data (fingerprint), replicate settings and image shape, otherwise ``ValueError``
    (use a fresh folder). ``num_replicates`` may grow on a later run: only missing ones are computed.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.replicate_dir = self.folder / "replicates"

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike,
        config: BootstrapConfig,
        fingerprint: str,
        image_shape: tuple[int, int, int],
        extra: dict | None = None,
    ) -> ReplicateStore:
        store = cls(folder)
        store.folder.mkdir(parents=True, exist_ok=True)
        store.replicate_dir.mkdir(exist_ok=True)
        wanted = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": fingerprint,
            "settings": config.replicate_settings(),
            "image_shape": list(image_shape),
        }
        path = store.folder / MANIFEST
        if path.is_file():
            have = store.manifest()
            for key in ("format", "version", "fingerprint", "settings", "image_shape"):
                if have.get(key) != wanted[key]:
                    raise ValueError(
                        f"{store.folder} holds a bootstrap run with a different {key} "
                        f"({have.get(key)!r} != {wanted[key]!r}): use another --out folder"
                    )
            manifest = have
        else:
            manifest = dict(wanted)
            manifest.update(extra or {})
        manifest["num_replicates"] = max(int(manifest.get("num_replicates", 0)), config.num_replicates)
        atomic_write_json(path, manifest)
        return store

    @classmethod
    def existing(cls, folder: str | os.PathLike) -> ReplicateStore:
        """An already written store (read-only use)."""
        store = cls(folder)
        if not (store.folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} is not a bootstrap store: {MANIFEST} is missing")
        return store

    def manifest(self) -> dict:
        try:
            return json.loads((self.folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.folder / MANIFEST} is damaged: {exc}") from exc

    def update_manifest(self, **fields) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        atomic_write_json(self.folder / MANIFEST, manifest)

    # ------------------------------------------------------------------ full-data image
    @property
    def full_data_path(self) -> Path:
        return self.folder / "full_data_map.npy"

    def save_full_data(self, image: np.ndarray) -> None:
        atomic_save_npy(self.full_data_path, np.asarray(image, dtype=np.float32))

    def load_full_data(self) -> np.ndarray | None:
        return np.load(self.full_data_path, allow_pickle=False) if self.full_data_path.is_file() else None

    # ------------------------------------------------------------------ replicates
    def image_path(self, index: int) -> Path:
        return self.replicate_dir / f"rep_{index:06d}.npy"

    def info_path(self, index: int) -> Path:
        return self.replicate_dir / f"rep_{index:06d}.json"

    def completed(self) -> list[int]:
        """Indices of the complete replicates, sorted."""
        if not self.replicate_dir.is_dir():
            return []
        out = []
        for p in self.replicate_dir.glob("rep_*.npy"):
            try:
                out.append(int(p.stem[4:]))
            except ValueError:
                continue
        return sorted(out)

    def missing(self, num_replicates: int) -> list[int]:
        done = set(self.completed())
        return [b for b in range(num_replicates) if b not in done]

    def save(self, result: ReplicateResult) -> None:
        """Write one replicate (info first, image last: the image marks completion)."""
        atomic_write_json(self.info_path(result.index), result.info)
        atomic_save_npy(self.image_path(result.index), result.image.astype(np.float32, copy=False))

    def load(self, index: int, mmap: bool = False) -> np.ndarray:
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"replicate {index} is not in {self.folder}")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def info(self, index: int) -> dict:
        path = self.info_path(index)
        return json.loads(path.read_text()) if path.is_file() else {}

    def iter_images(self, indices: list[int] | None = None):
        """Yield ``(index, image)`` one at a time (memory: one image)."""
        for b in self.completed() if indices is None else indices:
            yield b, self.load(b)

    def clean_temporaries(self) -> int:
        """Remove temporary files left by an interrupted write; returns how many."""
        n = 0
        for p in list(self.replicate_dir.glob(".*.tmp")) + list(self.folder.glob(".*.tmp")):
            p.unlink(missing_ok=True)
            n += 1
        return n
