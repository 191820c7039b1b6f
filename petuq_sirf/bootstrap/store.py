"""A resumable on-disk store of bootstrap replicates.

Layout of the folder::

    bootstrap.json              manifest: format, version, input fingerprint, replicate settings, image grid
    full_data_map.npy           the full-data MAP image every replicate starts from (z, y, x)
    replicates/rep_000007.json  the replicate's draw summary (weights, prior factor, objective, time) and
                                the SHA-256 of its image file
    replicates/rep_000007.npy   the replicate image (z, y, x), float32; its presence marks the replicate done
    bootstrap.lock              while a run works on the folder: its pid, host and start time

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so an interrupted run leaves either a complete replicate or
none. A replicate is identified by its index; writing it twice writes the same content to the same
name, so nothing is ever counted twice.

A replicate file altered or truncated on disk is found by its checksum (or, in stores written before
checksums were kept, because it cannot be read as an image of the right shape): :meth:`ReplicateStore.damaged`
lists it, :func:`~petuq_sirf.bootstrap.runner.run_bootstrap` names it in a warning and recomputes it, and
:meth:`ReplicateStore.load` refuses it (:class:`DamagedReplicateError`) rather than letting it into the
posterior. Two runs on one folder are prevented by :class:`StoreLock`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from petuq_sirf.bootstrap.replicate import BootstrapConfig, ReplicateResult
from petuq_sirf.io.atomic import atomic_write, atomic_write_bytes
from petuq_sirf.io.weights import sha256_of

MANIFEST = "bootstrap.json"
FORMAT = "petuq_sirf posterior bootstrap"
VERSION = 1


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class DamagedReplicateError(ValueError):
    """A replicate file that does not match its checksum or cannot be read; the message names the file."""


class StoreLockedError(ValueError):
    """Another run holds the store's lock; the message says which (pid, host, start time)."""


LOCK = "bootstrap.lock"
_HELD: dict[Path, int] = {}  # locks held by this process (re-entrant), path -> depth


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLock:
    """An exclusive lock on a bootstrap folder: the file ``bootstrap.lock`` with the holder's pid, host and start.

    ``with StoreLock(folder):`` creates the file atomically (write a temporary file, then ``os.link`` it
    into place, which fails if the lock exists). A second run gets :class:`StoreLockedError` naming the
    holder. A lock left by a process of this host that is no longer running (a killed run) is taken over
    with a warning. Re-entrant within one process.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = (self.folder / LOCK).resolve() if self.folder.exists() else self.folder / LOCK

    def holder(self) -> dict | None:
        """The lock file's content (``None`` without a lock; ``{}`` when it cannot be read)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> StoreLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = (self.folder / LOCK).resolve()
        if _HELD.get(self.path, 0) > 0:
            _HELD[self.path] += 1
            return self
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{LOCK}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            try:
                os.link(tmp, self.path)
                _HELD[self.path] = 1
                return self
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            held = self.holder()
            if held is None:
                continue  # released in the meantime: try again
            pid, host = held.get("pid"), held.get("host")
            if isinstance(pid, int) and host == me["host"] and not _pid_alive(pid):
                warnings.warn(
                    f"{self.path}: taking over the stale lock of pid {pid} on {host} (started "
                    f"{held.get('started', '?')}), which is no longer running",
                    stacklevel=2,
                )
                self.path.unlink(missing_ok=True)
                continue
            who = f"pid {pid} on host {host}, started {held.get('started', '?')}" if held else "an unreadable lock"
            raise StoreLockedError(
                f"{self.folder} is in use by another petuq bootstrap run ({who}): wait for it to finish, or "
                f"delete {self.path} if that run is gone"
            )
        raise StoreLockedError(f"could not take the lock {self.path}: other runs keep taking it")

    def __exit__(self, *exc) -> None:
        depth = _HELD.get(self.path, 0) - 1
        if depth > 0:
            _HELD[self.path] = depth
            return
        _HELD.pop(self.path, None)
        held = self.holder()
        if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


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
        """The stored full-data MAP, or ``None`` when absent or unreadable (then it is recomputed)."""
        if not self.full_data_path.is_file():
            return None
        try:
            return np.load(self.full_data_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"{self.full_data_path} cannot be read ({exc}): recomputing it", stacklevel=2)
            return None

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
        """Write one replicate (info with the image's SHA-256 first, image last: the image marks completion)."""
        payload = _npy_bytes(result.image.astype(np.float32, copy=False))
        info = {**result.info, "image_sha256": hashlib.sha256(payload).hexdigest()}
        atomic_write_json(self.info_path(result.index), info)
        atomic_write_bytes(self.image_path(result.index), payload)

    def problem(self, index: int) -> str | None:
        """Why replicate ``index`` cannot be used (checksum mismatch, unreadable, wrong shape), or ``None``."""
        path = self.image_path(index)
        if not path.is_file():
            return f"{path} is missing"
        want = self.info(index).get("image_sha256")
        if want is not None:
            have = sha256_of(path)
            if have != want:
                return f"{path} does not match its checksum (altered or truncated on disk: SHA-256 {have[:12]}..., stored {want[:12]}...)"
            return None
        try:  # stores written before checksums were kept: at least readable, with the manifest's shape
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            return f"{path} cannot be read ({' '.join(str(exc).split())})"
        shape = self.manifest().get("image_shape")
        if shape is not None and list(arr.shape) != list(shape):
            return f"{path} has shape {tuple(arr.shape)}, the store's images are {tuple(shape)}"
        return None

    def damaged(self) -> list[tuple[int, str]]:
        """``(index, reason)`` of every completed replicate that fails :meth:`problem`."""
        out = []
        for b in self.completed():
            reason = self.problem(b)
            if reason is not None:
                out.append((b, reason))
        return out

    def discard(self, index: int) -> None:
        """Remove replicate ``index`` (image first, so it no longer counts as done)."""
        self.image_path(index).unlink(missing_ok=True)
        self.info_path(index).unlink(missing_ok=True)

    def load(self, index: int, mmap: bool = False) -> np.ndarray:
        """Replicate ``index`` ``(z, y, x)``; verified against its checksum unless memory-mapped
        (:class:`DamagedReplicateError` naming the file when it fails)."""
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"replicate {index} is not in {self.folder}")
        if not mmap:
            reason = self.problem(index)
            if reason is not None:
                raise DamagedReplicateError(
                    f"{reason}: re-run the bootstrap on {self.folder} to recompute replicate {index}"
                )
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DamagedReplicateError(
                f"replicate file {path} cannot be read ({' '.join(str(exc).split())}): re-run the bootstrap "
                f"on {self.folder} to recompute it"
            ) from exc

    def info(self, index: int) -> dict:
        path = self.info_path(index)
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"image_sha256": "unreadable info file"}  # never matches: the replicate is recomputed

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
