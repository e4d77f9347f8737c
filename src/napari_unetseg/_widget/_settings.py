"""The panel's napari plugin settings (``configurations.panel`` in napari.yaml).

napari shows them in File > Preferences, in the plugin's section, and saves them in its config folder as
``napari-unetseg.yaml``. Outside a napari session that knows the plugin (a bare script) every
setting reads as its default and nothing is saved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

PLUGIN = "napari-unetseg"


def panel_settings() -> Any:
    """The settings object, or None where napari does not know the plugin's settings."""
    from napari.settings import get_plugin_settings

    try:
        return get_plugin_settings(PLUGIN).panel
    except KeyError:  # the plugin manager has not discovered this plugin (a bare script)
        return None


def last_used_model() -> str | None:
    """The key (built-in name or file path) of the model last used to segment; None if none."""
    settings = panel_settings()
    return (settings.last_model or None) if settings is not None else None


def remember_model(key: str) -> None:
    """Keep ``key`` as the model the panel opens on next time (napari saves its settings file)."""
    settings = panel_settings()
    if settings is not None and settings.last_model != key:
        settings.last_model = key


def preferred_device(available: Sequence[str]) -> str:
    """The device the panel opens on: the setting when this machine has it, else the first (best) one."""
    settings = panel_settings()
    wanted = settings.device if settings is not None else ""
    return wanted if wanted in available else available[0]


def job_threads() -> int:
    """CPU threads PyTorch gets in a panel job: the setting, or (0) every core but one, left to napari,
    on machines with more than two cores (every core on one or two).

    On two cores, leaving one to napari made fine-tuning 26 % slower and did not shorten napari's
    stalls (docs/benchmarks.md, *Responsiveness*); on more, a core costs a job less.
    """
    settings = panel_settings()
    threads = int(settings.threads) if settings is not None else 0
    cores = os.cpu_count() or 1
    return threads if threads > 0 else (cores - 1 if cores > 2 else cores)
