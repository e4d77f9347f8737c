"""The Segment shortcut: Shift+S in the viewer runs the panel's Segment button, as a click would.

napari 0.9 does not register the ``keybindings`` of a plugin's npe2 manifest (its plugin actions are
made with ``keybindings=[]``), so the widget binds the key on its viewer while it is open, and gives
back any binding it replaced when it closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.key_bindings import coerce_keybinding

#: The key, in napari's notation; unused by napari's own viewer and layer shortcuts.
SEGMENT_KEY = "Shift-S"
#: How the key is written for people (tooltips, docs).
SEGMENT_KEY_LABEL = "Shift+S"


def bind_segment_key(viewer: Any, segment: Callable[[], None]) -> Callable[[], None]:
    """Bind :data:`SEGMENT_KEY` on ``viewer`` to ``segment``; returns the function that undoes it."""

    def on_key(_viewer: Any) -> None:
        segment()

    previous = viewer.bind_key(SEGMENT_KEY, on_key, overwrite=True)

    def unbind() -> None:
        if viewer.keymap.get(coerce_keybinding(SEGMENT_KEY)) is on_key:  # not rebound by someone since
            viewer.bind_key(SEGMENT_KEY, previous, overwrite=True)

    return unbind
