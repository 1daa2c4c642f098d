"""What is at a path the user gave, in words; and writing ``--out`` files without replacing what is not ours.

Reading: ``not_a_file(path)`` names why a path cannot be read as a file (missing, a directory, a named
pipe, a device, a symlink loop), so an error says what is there instead of "no file at".

Writing: ``check_out_file`` refuses an ``--out`` that would replace anything but a regular file (a
device node, a pipe, a socket, a directory, a symlink) or that ends in ``/`` without being a directory;
``write_out_file`` writes beside it and renames over it, so a failed write leaves nothing half-written,
and the file gets the mode the user's umask gives a new file. No torch here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shb.errors import UsageError


def kind_of(mode: int) -> str:
    """A file type in words, from ``os.lstat(...).st_mode``."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return words
    return "not a regular file"


def not_a_file(path: Path) -> str | None:
    """None when ``path`` is (or links to) a regular file; else what is there instead, in words."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no file at"
    except NotADirectoryError:
        return "no file at (a parent is a file, not a directory)"
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return "a symbolic link loop at"
        return f"cannot read ({exc.strerror}):"
    if stat.S_ISREG(mode):
        return None
    return f"{kind_of(mode)}, not a regular file, at"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode open() gives a new file here (0o666 less the umask)."""
    return 0o666 & ~umask()


def check_out_file(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an ``--out`` file path that would replace something that is not a regular file."""
    text = os.fspath(out)
    path = Path(text)
    if text.endswith(("/", os.sep)):
        raise UsageError(f"{flag} {text}: ends with '/' but is not an existing directory; give a file name"
                         f" such as {text}results" if not path.is_dir() else
                         f"{flag} {text} is a directory; give a file name inside it")
    parent = path.parent
    blocking = next((p for p in [parent, *parent.parents] if os.path.lexists(p)), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"{flag} {text}: {blocking} is a file, not a directory")
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{flag} {text} is a directory; give a file name")
        if not stat.S_ISREG(mode):
            raise UsageError(f"{flag} {text} is {kind_of(mode)}; shb replaces only regular files: choose another"
                             " path")
    return path


def write_out_file(out: str | os.PathLike, write, flag: str = "--out") -> Path:
    """Check ``out``, call ``write(tmp_path)`` beside it and move the result over ``out`` (with the umask's mode)."""
    path = check_out_file(out, flag)
    tmp = path.with_name(f".{path.name}.shb-part")
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())
        check_out_file(out, flag)  # still nothing but a regular file (or nothing) there
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_out_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """An ``--out`` directory: a directory or nothing yet (never a file, a device or a link to one)."""
    path = Path(out)
    if os.path.lexists(path) and not path.is_dir():
        mode = os.lstat(path).st_mode
        what = "a file" if stat.S_ISREG(mode) else kind_of(mode)
        raise UsageError(f"{flag} {os.fspath(out)} is {what}; give a directory (it is created if missing)")
    blocking = next((p for p in path.parents if os.path.lexists(p)), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"{flag} {os.fspath(out)}: {blocking} is a file, not a directory")
    return path


def fix_modes(directory: Path) -> None:
    """Give every file shb wrote into ``directory`` the umask's mode (some writers create 0600 files)."""
    mode = new_file_mode()
    for child in Path(directory).rglob("*"):
        if child.is_file() and not child.is_symlink():
            os.chmod(child, mode)
