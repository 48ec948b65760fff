"""Write-then-rename helpers: an interrupted command never leaves a half-written artifact. And a file's SHA-256."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def _usual_mode(bits: int) -> int:
    """`bits` minus the process umask: mkstemp/mkdtemp make private files, artifacts should not be."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


def require_free_space(folder: str | os.PathLike, need: int, code: str, margin: float = 1.1) -> None:
    """Refuse before writing anything, saying how much is needed, when the disk has less than `need` × `margin`."""
    from afinar.errors import AfinarError

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell (some network file systems): let the write itself fail
    if free < need * margin:
        raise AfinarError(code, f"no hay espacio: hacen falta unos {need / 1e6:,.0f} MB y quedan {free / 1e6:,.0f} MB.",
                          where=str(folder))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[TextIO]:
    """A handle (text "w" or binary "wb") on a temporary sibling file, renamed onto `path` only if the block ends
    without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _usual_mode(0o666))
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final` in one rename.

    On any exception the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(_usual_mode(0o777))
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            # Move the old one aside first so the swap is a pair of renames, not a slow rmtree window.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """A file's SHA-256, read in 4 MiB blocks (a GGUF or a safetensors of several GB never whole in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
