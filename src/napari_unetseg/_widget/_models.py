"""The model picker: built-in models, the user's fine-tuned versions and checkpoint files or bioimage.io
packages loaded by hand; "Export…" saves the chosen model as a bioimage.io package for other tools.

It opens on the model used last (remembered in napari's plugin settings), else the default
``nuclei``, passing over a model made for another kind of image than the one chosen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicgui.application import use_app
from magicgui.widgets import ComboBox, Container, PushButton

from .. import versions
from ..checkpoint import Checkpoint, CheckpointError, ModelInfo
from ..imaging import model_imaging
from ..models import builtin_names, resolve_model
from ..options import DEFAULT_MODEL
from ._layers import Note, notify
from ._settings import last_used_model


@dataclass(frozen=True)
class ModelEntry:
    """One choice: ``key`` is a built-in name or a file path, ``name`` the short name shown and versioned."""

    key: str
    name: str
    kind: str  # "built-in", "fine-tuned" or "file"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind})"


class ModelPicker(Container):
    """A model list with "Load…" and "Export…" buttons and a line describing the chosen model."""

    def __init__(self) -> None:
        self._files: list[Path] = []
        self._cache: dict[str, tuple[float, Checkpoint]] = {}
        self.chosen_by_user = False  # once true, a new image no longer changes the preselected model
        self._preselecting = False
        self.model = ComboBox(
            choices=self._choices, tooltip="Built-in models, your fine-tuned versions and loaded files"
        )
        self.load_button = PushButton(text="Load…", tooltip="Load a checkpoint (.pt) or bioimage.io package (.zip)")
        self.export_button = PushButton(
            text="Export…", tooltip="Save the chosen model as a bioimage.io package (.zip) for other tools"
        )
        self._export_worker: Any = None
        self.info = Note()
        row = Container(widgets=[self.model, self.load_button, self.export_button], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        row.native.layout().setStretch(0, 1)
        super().__init__(widgets=[row, self.info], labels=False, label="model")
        self.margins = (0, 0, 0, 0)
        self.model.changed.connect(self._on_changed)
        self.load_button.changed.connect(self._on_load_clicked)
        self.export_button.changed.connect(self._on_export_clicked)
        self.preselect(None)

    # -- the list

    def entries(self) -> list[ModelEntry]:
        """Built-ins, then saved versions, then files loaded this session (no file twice)."""
        rows = [ModelEntry(name, name, "built-in") for name in builtin_names()]
        seen: set[Path] = set()
        for version in versions.list_versions():
            seen.add(version.path.resolve())
            rows.append(ModelEntry(str(version.path), version.name, "fine-tuned"))
        rows += [ModelEntry(str(path), path.stem, "file") for path in self._files if path.resolve() not in seen]
        return rows

    def _choices(self, _widget: ComboBox | None = None) -> list[tuple[str, str]]:
        return [(entry.label, entry.key) for entry in self.entries()]

    def refresh(self) -> None:
        """Re-read the saved versions (keeps the selection when it still exists)."""
        self.model.reset_choices()

    def current(self) -> ModelEntry | None:
        return next((e for e in self.entries() if e.key == self.model.value), None)

    def find(self, name_or_key: str) -> ModelEntry | None:
        """The entry with this key or short name (a parent recorded in a checkpoint)."""
        return next((e for e in self.entries() if name_or_key in (e.key, e.name)), None)

    def select(self, key: str) -> None:
        self.refresh()
        self.model.value = key
        self.chosen_by_user = True

    def preselect(self, image_kind: str | None) -> None:
        """Choose the model last used, else the default, else the first listed, skipping models for another
        kind of image than ``image_kind`` (``None``: any kind); unknown models fit any image."""
        names = {entry.key: entry.name for entry in self.entries()}
        order = [key for key in (last_used_model(), DEFAULT_MODEL) if key in names] + list(names)
        fitting = [key for key in order if image_kind is None or model_imaging(names[key]) in (None, image_kind)]
        before = self.model.value
        if order:
            self._preselecting = True
            try:
                self.model.value = (fitting or order)[0]
            finally:
                self._preselecting = False
        if self.model.value == before:  # no change event: describe the model here
            self._on_changed()

    def add_file(self, path: str | Path) -> ModelEntry:
        """Load a checkpoint file (:class:`CheckpointError` if unusable), list it and select it."""
        path = Path(path).expanduser().absolute()
        self._load(str(path))
        if path not in self._files:
            self._files.append(path)
        self.select(str(path))
        entry = self.current()
        assert entry is not None
        return entry

    # -- checkpoints

    def checkpoint(self) -> Checkpoint:
        """A private copy of the chosen model; :class:`CheckpointError` if none is chosen or it cannot load."""
        entry = self.current()
        if entry is None:
            raise CheckpointError("No model is chosen: pick one in the model list or load a checkpoint (.pt) file.")
        cached = self._load(entry.key)
        return Checkpoint(copy.deepcopy(cached.model), copy.deepcopy(cached.info), cached.path)

    def current_info(self) -> ModelInfo | None:
        """Metadata of the chosen model (``None`` if none); :class:`CheckpointError` if it cannot load."""
        entry = self.current()
        return None if entry is None else self._load(entry.key).info

    def _load(self, key: str) -> Checkpoint:
        """Load (or reuse while the file is unchanged) the checkpoint for ``key``."""
        path = Path(key) if key not in builtin_names() else None
        stamp = path.stat().st_mtime if path is not None and path.is_file() else 0.0
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        checkpoint = resolve_model(path if path is not None else key)
        self._cache[key] = (stamp, checkpoint)
        return checkpoint

    # -- events

    def _on_changed(self, *event: object) -> None:
        if event and not self._preselecting:  # a change event not caused by preselect: the user's pick
            self.chosen_by_user = True
        entry = self.current()
        if entry is None:
            self.info.value = "No model yet: load a checkpoint (.pt) file."
            return
        try:
            info = self._load(entry.key).info
        except CheckpointError as exc:
            self.info.value = f"{entry.name} cannot be used."
            notify("error", str(exc))
            return
        self.info.value = describe_model(entry, info)

    def _on_load_clicked(self, *_: object) -> None:
        path = self.ask_checkpoint_path()
        if not path:
            return
        try:
            entry = self.add_file(path)
        except CheckpointError as exc:
            notify("error", str(exc))
            return
        notify("info", f"Loaded {entry.name} from {path}.")

    def ask_checkpoint_path(self) -> str | None:
        """A file dialog for a checkpoint (tests replace this)."""
        show = use_app().get_obj("show_file_dialog")
        return show("r", caption="Load a U-Net checkpoint or bioimage.io package", filter="Models (*.pt *.pth *.zip)")

    def _on_export_clicked(self, *_: object) -> None:
        path = self.ask_export_path()
        if path:
            self.export(path)

    def ask_export_path(self) -> str | None:
        """A save dialog for the package (tests replace this); it asks before replacing a file."""
        show = use_app().get_obj("show_file_dialog")
        return show("w", caption="Export as a bioimage.io package", filter="bioimage.io packages (*.zip)")

    def export(self, path: str | Path) -> None:
        """Write the chosen model as a bioimage.io package in a worker thread (a few seconds), replacing
        ``path`` (``.zip`` added when missing); a notification says when it is written or why not."""
        from napari.qt.threading import create_worker

        from ..bioimageio import export_package

        try:
            checkpoint = self.checkpoint()
        except CheckpointError as exc:
            notify("error", str(exc))
            return
        path = Path(path)
        path = path if path.suffix.lower() == ".zip" else path.with_name(path.name + ".zip")
        name = checkpoint.info.name or path.stem
        worker = create_worker(export_package, checkpoint, path, overwrite=True, _ignore_errors=True)  # shown below
        worker.returned.connect(lambda out: notify("info", f"Exported {name} to {out} (bioimage.io package)."))
        worker.errored.connect(lambda exc: notify("error", f"{name} was not exported: {exc}"))
        worker.finished.connect(lambda: setattr(self.export_button, "enabled", True))
        self.export_button.enabled = False
        self._export_worker = worker  # kept: the worker must outlive this call
        worker.start()


def describe_model(entry: ModelEntry, info: ModelInfo) -> str:
    """One or two lines about a model: mode, classes, where it came from and its validation score."""
    training = info.training or {}
    lines = [f"{entry.name}: {info.mode} model", f"classes: {', '.join(info.class_names)}"]
    origin = [f"fine-tuned from {training['parent']}"] if training.get("parent") else []
    metrics = training.get("metrics") or {}
    score = metrics.get("val_score", metrics.get("val_mean_iou"))  # val_mean_iou: checkpoints before 0.2
    if isinstance(score, float):
        before = metrics.get("parent_val_score")
        origin.append(f"held-out score {score:.2f}" + (f" (its parent: {before:.2f})" if before is not None else ""))
    return "\n".join(lines + ([", ".join(origin)] if origin else []))
