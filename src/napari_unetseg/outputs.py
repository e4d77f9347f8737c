"""Where results go: pairing inputs with output paths, and refusing outputs that would lose data.

The policy every writing command shares (``segment``, ``train``, ``measure``), checked before any
work so that a bad output is reported at once and nothing is half-written: an output never
replaces one of the command's inputs (even with ``--overwrite``), two inputs never write the
same file, an existing output is kept unless overwriting was asked for, and the folder must be
writable. Errors are :class:`OutputError` (a ``ValueError``) with a message for people.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .options import LARGE_RESULT_BYTES, ZARR_SUFFIX

TIFF_SUFFIXES = (".tif", ".tiff")


class OutputError(ValueError):
    """An output path that cannot be used; the message says why."""


def file_stem(path: Path) -> str:
    """File name without its image suffix(es): ``cells.ome.tif`` -> ``cells``, ``em.ome.zarr`` -> ``em``."""
    name = path.name
    for suffix in (*TIFF_SUFFIXES, ZARR_SUFFIX, ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.stem


def plan_label_outputs(
    inputs: Sequence[Path], output: Path, overwrite: bool, sizes: Sequence[int], extra_inputs: Sequence[Path] = ()
) -> list[tuple[Path, Path]]:
    """Pair every input with its labels' path; refuse clashes and existing outputs before any work.

    ``output`` is a .tif/.zarr for a single input, or a folder that gets ``<name>_labels.tif`` per
    input; ``sizes`` (bytes of each input's labels) choose zarr there for results over
    :data:`~.options.LARGE_RESULT_BYTES`. ``extra_inputs`` (e.g. the model file) must not be
    overwritten either.
    """
    from .io import is_zarr_store

    suffix = output.suffix.lower()
    if suffix == ZARR_SUFFIX or (suffix in TIFF_SUFFIXES and not output.is_dir()):
        if len(inputs) > 1:
            raise OutputError(f"{len(inputs)} inputs need a folder as output, not the file name {output}")
        jobs = [(inputs[0], output)]
    else:
        if output.suffix and not output.is_dir():
            raise OutputError(
                f"{output}: labels are written as TIFF or zarr; end the file name in .tif or .zarr, or give "
                "a folder (an existing one, or a name without a suffix)"
            )
        if output.exists() and not output.is_dir():
            raise OutputError(f"{output} is a file; the output must be a folder")
        jobs = [
            (src, output / f"{file_stem(src)}_labels{ZARR_SUFFIX if size > LARGE_RESULT_BYTES else '.tif'}")
            for src, size in zip(inputs, sizes)
        ]
    claimed: dict[Path, Path] = {}
    refuse_outputs_over_inputs([dst for _, dst in jobs], [*inputs, *extra_inputs])
    for src, dst in jobs:
        key = dst.resolve()
        if key in claimed:
            raise OutputError(f"{claimed[key]} and {src} would both be written to {dst}")
        claimed[key] = src
        if dst.is_dir() and not (dst.suffix.lower() == ZARR_SUFFIX and is_zarr_store(dst)):
            raise OutputError(f"output {dst} is a folder")
        refuse_existing(dst, overwrite)
        check_writable_folder(dst.parent)
    return jobs


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``overwrite`` (the CLI's ``--overwrite``)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it")


def refuse_outputs_over_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """Refuse any output that is one of the command's inputs, even with ``--overwrite``.

    Paths are compared after resolving symbolic links (and by inode, for hard links); an output
    folder (zarr store) holding an input, or lying inside one, counts too, since replacing or
    filling it would change the input.
    """
    for dst in outputs:
        real_dst = Path(os.path.realpath(dst))
        for src in inputs:
            real_src = Path(os.path.realpath(src))
            same = real_dst == real_src or (dst.exists() and src.exists() and os.path.samefile(dst, src))
            if same or real_src.is_relative_to(real_dst) or real_dst.is_relative_to(real_src):
                raise OutputError(f"output {dst} would overwrite the input {src}; choose another output")


def check_writable_folder(folder: Path) -> None:
    """Fail now if ``folder`` cannot be created or written, rather than after the first image."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing}: permission denied (cannot write output there)")
