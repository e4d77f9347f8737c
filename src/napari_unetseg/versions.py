"""The user's own model versions: fine-tuned checkpoints kept in a per-user folder, never overwritten.

Versions are files ``<base>-ft<N>.pt`` in :func:`versions_dir` (the platform's user data folder,
e.g. ``~/.local/share/napari-unetseg/models`` on Linux). Fine-tuning ``nuclei`` gives
``nuclei-ft1``, fine-tuning that (or ``nuclei`` again) gives ``nuclei-ft2``, and so on: a new
number is always past the highest one there, and saving never replaces a file. The folder can be
moved with the environment variable ``NAPARI_UNETSEG_MODELS_DIR`` or a ``root`` argument (tests).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import ModelInfo
    from .model import UNet

ENV_VAR = "NAPARI_UNETSEG_MODELS_DIR"
SUFFIX = ".pt"
_VERSION = re.compile(r"^(?P<base>.+)-ft(?P<number>\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelVersion:
    """A saved version: ``name`` (file stem, e.g. ``nuclei-ft2``), its file, base model and number."""

    name: str
    path: Path
    base: str
    number: int


def versions_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the versions: ``root``, else ``$NAPARI_UNETSEG_MODELS_DIR``, else the user data folder."""
    if root is not None:
        return Path(root)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    import platformdirs

    return platformdirs.user_data_path("napari-unetseg", appauthor=False) / "models"


def base_name(name: str) -> str:
    """The model a name derives from, safe as a file name: ``"nuclei-ft3"`` -> ``"nuclei"``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    """
    stem = _UNSAFE.sub("_", Path(str(name)).name.removesuffix(SUFFIX)).strip("._") or "model"
    match = _VERSION.match(stem)
    return match.group("base") if match else stem


def list_versions(root: str | os.PathLike | None = None, base: str | None = None) -> list[ModelVersion]:
    """Saved versions, sorted by base name then number; only those of ``base`` if given.

    Other ``.pt`` files a user dropped into the folder are listed too, with number 0.
    """
    folder = versions_dir(root)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        if path.name.startswith(".") or not path.is_file():
            continue
        match = _VERSION.match(path.stem)
        version = (
            ModelVersion(path.stem, path, match.group("base"), int(match.group("number")))
            if match
            else ModelVersion(path.stem, path, path.stem, 0)
        )
        if base is None or version.base == base_name(base):
            found.append(version)
    return sorted(found, key=lambda v: (v.base, v.number, v.name))


def find_version(name: str, root: str | os.PathLike | None = None) -> ModelVersion | None:
    """The saved version called ``name``, or ``None``."""
    return next((v for v in list_versions(root) if v.name == name), None)


def next_version_name(parent: str, root: str | os.PathLike | None = None) -> str:
    """Name for the next version fine-tuned from ``parent`` (a model name or checkpoint path)."""
    base = base_name(parent)
    numbers = [v.number for v in list_versions(root, base)]
    return f"{base}-ft{max(numbers, default=0) + 1}"


def save_version(model: UNet, info: ModelInfo, parent: str, root: str | os.PathLike | None = None) -> ModelVersion:
    """Save ``model`` atomically as the next version of ``parent`` and return it.

    ``info`` is copied, named after the version and records ``parent`` in ``training["parent"]``
    (unless it names one already). Never overwrites: if another process takes the name first, the next
    number is used.
    """
    from .checkpoint import save_checkpoint

    folder = versions_dir(root)
    for _ in range(1000):
        name = next_version_name(parent, folder)
        saved_info = copy.deepcopy(info)
        saved_info.name = name
        if not saved_info.training.get("parent"):
            saved_info.training["parent"] = str(parent)
        path = folder / f"{name}{SUFFIX}"
        try:
            save_checkpoint(path, model, saved_info, overwrite=False)
        except FileExistsError:
            continue
        match = _VERSION.match(name)
        assert match is not None
        return ModelVersion(name, path, match.group("base"), int(match.group("number")))
    raise RuntimeError(f"could not find a free version name for {parent!r} in {folder}")
