"""Provenance: how a result was made (package, model, parameters, input, date, the command) and a model's ancestry.

A record is a plain JSON-able dict stored under :data:`RECORD_KEY`: in a labels TIFF's
ImageDescription (tifffile's JSON metadata), in a labels zarr's array attributes, and in the
``metadata`` of the napari layers the widget makes. Its ``command`` is the ``unetseg segment``
call that makes the same labels again, so a result found on disk months later can be explained
and reproduced. :func:`model_history` follows the ``parent`` that fine-tuned checkpoints record
back to the model they started from.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__

#: The key of the record in file metadata and in a layer's ``metadata``.
RECORD_KEY = "napari_unetseg"
#: Stands for the input in the command of a result whose image came from no file.
NO_INPUT = "IMAGE.tif"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes; computed once per file version (a folder of inputs hashes the model once)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).absolute()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """The hash of ``path`` as it was at ``mtime_ns`` with ``size`` bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_spec(checkpoint: Any) -> str:
    """What ``--model`` must say to load ``checkpoint`` again: a built-in's name, else its file (absolute)."""
    from .models import BUILTIN_DIR

    path = checkpoint.path
    if path is None:
        return checkpoint.info.name
    path = Path(path)
    return path.stem if path.parent == BUILTIN_DIR else str(path.absolute())


def segment_command(
    input_path: str | None, output: str | os.PathLike | None, model: str, parameters: dict[str, Any]
) -> str:
    """The ``unetseg segment`` command line (quoted with :func:`shlex.join`) for these parameters.

    Without ``output`` the labels go beside the input as ``<name>_labels.tif``; without an
    input the command names :data:`NO_INPUT` for the user to replace.
    """
    source = input_path or NO_INPUT
    if output is None:
        output = Path(source).with_name(f"{Path(source).name.split('.')[0]}_labels.tif")
    words = ["unetseg", "segment", source, "-o", str(output), "--model", model]
    for option in ("device", "precision", "backend", "tile_size", "batch_size", "axes"):
        if parameters.get(option) is not None:
            words += [f"--{option.replace('_', '-')}", str(parameters[option])]
    if parameters.get("stitch_z"):
        words += ["--stitch-z", *_volume_options(parameters)]
    if parameters.get("stitch_z") or "diameter" in parameters:
        diameter = parameters.get("diameter", "auto")  # None: the image's own scale, written as 0
        words += ["--diameter", "auto" if diameter == "auto" else f"{float(diameter or 0):g}"]
    return shlex.join(words)


def _volume_options(parameters: dict[str, Any]) -> list[str]:
    """``--z-method`` and ``--voxel-size`` of a 3D (``stitch_z``) run, when recorded."""
    words = []
    if parameters.get("z_method") is not None:
        words += ["--z-method", str(parameters["z_method"])]
    if parameters.get("voxel_size") is not None:
        words += ["--voxel-size", ",".join(f"{float(v):g}" for v in parameters["voxel_size"])]
    return words


def make_record(
    checkpoint: Any,
    parameters: dict[str, Any],
    input_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The provenance record of a result of ``checkpoint`` with the engine ``parameters``.

    ``parameters`` holds the options given to segmentation (``device``, ``precision``,
    ``backend``, ``tile_size``, ``batch_size``, ``axes``, ``stitch_z``, ``diameter``; with ``stitch_z``
    also ``z_method`` and ``voxel_size``) and the image ``shape``.
    The checkpoint's sha256 is that of its file (a built-in model's file inside the package);
    None for a checkpoint built in memory. Paths are made absolute so the command works from
    any folder.
    """
    path = None if checkpoint.path is None else Path(checkpoint.path)
    source = None if input_path is None else str(Path(input_path).absolute())
    target = None if output is None else Path(output).absolute()
    plain = json.loads(json.dumps(parameters, default=str))  # tuples -> lists, devices -> names
    model = _model_spec(checkpoint)
    return {
        "package_version": __version__,
        "model": checkpoint.info.name or model,
        "model_file": None if path is None else str(path.absolute()),
        "model_sha256": None if path is None else file_sha256(path),
        "parameters": plain,
        "input": source,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": segment_command(source, target, model, plain),
    }


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record stored in a labels TIFF or zarr written by ``unetseg segment``; None if it has none."""
    import tifffile
    import zarr

    from .io import ImageReadError, _check_file, _read_error, is_zarr

    path = Path(path)
    _check_file(path)
    try:
        if is_zarr(path):
            return zarr.open_array(store=str(path), mode="r").attrs.get(RECORD_KEY)
        with tifffile.TiffFile(path) as tif:
            shaped = tif.shaped_metadata or ()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile and zarr raise many kinds on malformed files
        raise _read_error(path, exc) from None
    return next((meta[RECORD_KEY] for meta in shaped if RECORD_KEY in meta), None)


# --------------------------------------------------------------------------- model history


def _locate(key: str, root: str | os.PathLike | None) -> tuple[Path, str] | None:
    """The file and kind (``"file"``, ``"built-in"``, ``"saved version"``) of a model path or name; None if none."""
    from . import versions
    from .models import builtin_names, builtin_path

    if Path(key).is_file():
        return Path(key), "file"
    if key in builtin_names():
        return builtin_path(key), "built-in"
    version = versions.find_version(key, root)
    return (version.path, "saved version") if version is not None else None


def model_history(spec: str, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The chain from the model ``spec`` (a file, built-in name or saved version name) back to its first ancestor.

    Each step has ``name``, ``file``, ``kind``, ``created`` and ``parent`` (the name recorded by
    fine-tuning). A parent that cannot be found any more ends the chain as a step with
    ``kind="missing"``. Raises :class:`~.checkpoint.CheckpointError` if ``spec`` names no model.
    """
    from .checkpoint import CheckpointError, load_checkpoint

    found = _locate(spec, root)
    if found is None:
        raise CheckpointError(f"{spec}: no such checkpoint file, built-in model or saved version")
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    while found is not None and found[0].resolve() not in seen:
        path, kind = found
        seen.add(path.resolve())
        info = load_checkpoint(path).info
        parent, parent_file = info.training.get("parent"), info.training.get("parent_file")
        chain.append({"name": info.name or path.stem, "file": str(path), "kind": kind, "created": info.created,
                      "parent": parent})
        if not parent and not parent_file:
            return chain
        found = _locate(str(parent_file), root) if parent_file else None
        found = found or (_locate(str(parent), root) if parent else None)
        if found is None:
            chain.append({"name": parent or parent_file, "file": parent_file, "kind": "missing", "created": None,
                          "parent": None})
    return chain


def format_history(chain: list[dict[str, Any]]) -> list[str]:
    """Lines for people: the model, then ``<- parent`` per ancestor, each with its file and date."""
    lines = []
    for number, step in enumerate(chain):
        if step["kind"] == "missing":
            where = "not found (no such file, built-in model or saved version)"
        else:
            where = f"{step['kind']} {step['file']}, created {step['created']}"
        lines.append(f"{'  <- ' if number else ''}{step['name']}: {where}")
    return lines
