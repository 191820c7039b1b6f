"""Classical bootstrap sinograms made by STIR's ``lm_to_projdata_bootstrap``.

``lm_to_projdata_bootstrap PAR_FILE SEED`` reads a list-mode file, draws as many events as it holds
with replacement and bins them like ``lm_to_projdata`` (same parameter file, plus a ``seed``). We
write the parameter file, run the executable with the replicate's integer seed
(:func:`~petuq_sirf.bootstrap.weights.replicate_int_seed`) and read the Interfile output back with
:func:`~petuq_sirf.io.interfile.read_projdata`; the sinograms are then reconstructed by our code.
There is no Python or SIRF wrapper for this utility, hence the subprocess. The list-mode input must
be a format STIR reads (e.g. a Siemens mMR ``.l.hdr``, see :mod:`petuq_sirf.io.mmr_listmode`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch

from petuq_sirf.io.interfile import read_projdata

EXECUTABLE = "lm_to_projdata_bootstrap"


def stir_bootstrap_executable() -> str | None:
    """Full path of ``lm_to_projdata_bootstrap`` on PATH, or None."""
    return shutil.which(EXECUTABLE)


def write_bootstrap_par(
    path: str | os.PathLike,
    listmode_file: str | os.PathLike,
    template_projdata: str | os.PathLike,
    output_prefix: str | os.PathLike,
    seed: int,
    store_delayeds: bool = False,
) -> Path:
    """Write an ``lm_to_projdata_bootstrap`` parameter file (prompts only by default, one frame)."""
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"STIR's seed is a 31-bit non-negative integer, got {seed}")
    path = Path(path)
    lines = [
        "lm_to_projdata Parameters:=",
        f"input file := {Path(listmode_file).resolve()}",
        f"output filename prefix := {Path(output_prefix).resolve()}",
        f"template_projdata := {Path(template_projdata).resolve()}",
        "Store prompts := 1",
        f"Store delayeds := {int(store_delayeds)}",
        "LmToProjDataBootstrap Parameters:=",
        f"seed := {int(seed)}",
        "END:=",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _output_header(prefix: Path) -> Path:
    """STIR names the first frame ``<prefix>_f1g1d0b0.hs``; accept ``<prefix>.hs`` too."""
    for cand in (prefix.with_name(prefix.name + "_f1g1d0b0.hs"), prefix.with_name(prefix.name + ".hs")):
        if cand.is_file():
            return cand
    found = sorted(prefix.parent.glob(prefix.name + "*.hs"))
    if not found:
        raise FileNotFoundError(f"{EXECUTABLE} wrote no Interfile projection data with prefix {prefix}")
    return found[0]


def stir_bootstrap_sinogram(
    listmode_file: str | os.PathLike,
    template_projdata: str | os.PathLike,
    seed: int,
    workdir: str | os.PathLike,
    executable: str | None = None,
    timeout_s: float | None = None,
) -> torch.Tensor:
    """One STIR bootstrap sinogram ``(sinograms, views, tangential)`` (float32) of the list-mode file.

    Raises ``FileNotFoundError`` when the executable is absent and ``RuntimeError`` (with STIR's
    last output lines) when it fails.
    """
    exe = executable or stir_bootstrap_executable()
    if exe is None:
        raise FileNotFoundError(f"STIR's {EXECUTABLE} is not on PATH")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    prefix = work / f"bootstrap_seed{int(seed)}"
    par = write_bootstrap_par(work / f"bootstrap_seed{int(seed)}.par", listmode_file, template_projdata, prefix, seed)
    proc = subprocess.run([exe, str(par), str(int(seed))], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{EXECUTABLE} failed with exit status {proc.returncode}: {tail}")
    data = read_projdata(_output_header(prefix))
    return torch.from_numpy(data.array.astype("float32"))
