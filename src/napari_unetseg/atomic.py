"""Files written atomically: the data goes to a temporary name in the same folder, then takes the final name.

A crash never leaves a half-written file under the final name. The temporary file is opened with
mode ``"x"``, which honours the umask like any file a user's programs write (``tempfile.mkstemp``
would make it private, mode 0600, so colleagues could not read a model saved to a shared folder).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NoReturn


@contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose contents appear under ``path`` only when the block ends without error.

    Without ``overwrite``, an existing file (even one created meanwhile) is never replaced:
    :class:`FileExistsError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        move_into_place(tmp, path, overwrite)
    except BaseException as exc:  # a full disk, Ctrl-C, ...: no temporary file is left
        tmp.unlink(missing_ok=True)
        raise_naming(exc, path)


def move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give ``tmp`` the name ``path``; without ``overwrite``, never replace a file created meanwhile."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if the name is taken
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting") from None
    except OSError:  # file systems without hard links (e.g. FAT, some network shares)
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name or allow overwriting") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def raise_naming(exc: BaseException, path: str | os.PathLike) -> NoReturn:
    """Re-raise ``exc``; a storage error that names no file (e.g. a full disk) is raised as one naming ``path``.

    Writers call this after removing their temporary file, so the message says which output
    failed: ``out/b_labels.tif: No space left on device``.
    """
    if isinstance(exc, OSError) and not exc.filename and exc.errno in _STORAGE_ERRNOS:
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc
    raise exc
