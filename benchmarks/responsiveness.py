"""How long napari's event loop stalls while the panel segments and fine-tunes, as quoted in docs/benchmarks.md.

    xvfb-run -a python benchmarks/responsiveness.py              # jobs with the default thread cap
    xvfb-run -a python benchmarks/responsiveness.py --threads 2  # ... with 2 PyTorch threads instead

The viewer starts as ``unetseg gui`` starts it (the 2D sample, the panel docked, the defaults).
A 10 ms timer on the Qt event loop records how late each tick comes; a stall is a tick's lateness
(the time the loop could not draw or answer a click). The script clicks **Segment** twice, waits, then
clicks New annotations, paints the sample's truth and clicks **Fine-tune** (``--iterations``), and
prints the longest stall and the 99th percentile per phase, idle included, as JSON. Fine-tuned versions
go to a temporary folder, not the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

TICK_MS = 10


class StallMeter:
    """Records how late a repeating Qt timer fires: the event loop's stalls."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.lateness_ms: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.lateness_ms.append(max(0.0, (now - self._last) * 1000 - TICK_MS))
        self._last = now

    def take(self) -> dict[str, float]:
        """The longest stall and the 99th percentile since the last call (ms), and the ticks counted."""
        late, self.lateness_ms = np.asarray(self.lateness_ms), []
        if late.size == 0:
            return {"longest_ms": float("nan"), "p99_ms": float("nan"), "ticks": 0}
        return {"longest_ms": round(float(late.max()), 1), "p99_ms": round(float(np.percentile(late, 99)), 1),
                "ticks": int(late.size)}


def wait(app, until, timeout_s: float) -> float:
    """Run the event loop until ``until()`` is true; the seconds it took."""
    start = time.perf_counter()
    while not until():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"the job did not end within {timeout_s} s")
        app.processEvents()
        time.sleep(0.001)
    return round(time.perf_counter() - start, 1)


def wait_idle(app, seconds: float) -> None:
    """Run the event loop for ``seconds`` with nothing else to do."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        app.processEvents()
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="the panel's threads setting (0: the default cap)")
    parser.add_argument("--iterations", type=int, default=60, help="fine-tuning iterations")
    args = parser.parse_args()
    from napari_unetseg import versions

    os.environ[versions.ENV_VAR] = tempfile.mkdtemp(prefix="unetseg-responsiveness-")

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_unetseg._sample_data import sample_image_2d
    from napari_unetseg._widget import _runner
    from napari_unetseg._widget._launch import set_up_viewer
    from napari_unetseg._widget._main import UNetSegWidget
    from napari_unetseg.quantize import cpu_kind

    if args.threads:  # as the panel's threads setting would, without writing the user's napari settings
        _runner.job_threads = lambda: args.threads
    viewer = set_up_viewer(napari.Viewer(title="napari-unetseg", show=True))
    app = QApplication.instance()
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))
    meter = StallMeter()
    result: dict[str, object] = {
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_kind()}",
        "torch": torch.__version__, "job_threads": _runner.job_threads(),
    }
    wait_idle(app, 2)  # the baseline (the widget's background preload runs here)
    result["idle"] = meter.take()

    for phase in ("segment_first", "segment_again"):  # the first run also loads and prepares the model
        widget.segment.run_button.clicked.emit()
        seconds = wait(app, lambda: not widget.busy(), 600)
        result[phase] = {**meter.take(), "seconds": seconds, "model": widget.models.current().name}

    _, truth = sample_image_2d()  # New annotations and painting: a user's clicks of their own, not the job
    widget.annotate.new_annotations()
    widget.annotate.annotations.value.data[:] = np.where(truth > 0, truth + 1, 1)
    widget.annotate.annotations.value.refresh()
    wait_idle(app, 0.5)
    result["new_annotations"] = meter.take()
    widget.finetune.iterations.value = args.iterations
    widget.finetune.train_button.clicked.emit()
    seconds = wait(app, lambda: not widget.busy(), 1800)
    result["fine_tune"] = {**meter.take(), "seconds": seconds, "iterations": args.iterations}
    print(json.dumps(result, indent=1))
    viewer.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
