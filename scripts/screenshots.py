"""Screenshots of the plugin at work, for docs/plugin.md: segment, correct, fine-tune, uncertainty.

Run under a display (headless: ``xvfb-run -a python scripts/screenshots.py``; about five minutes on
two CPU cores). Starts from the built-in ``nuclei`` model (or ``--model FILE``). Saved versions go to
a temporary folder, not your model folder. ``scripts/first_launch.py`` takes the first-launch pictures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the plugin did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Let the viewer redraw."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    parser.add_argument("--iterations", type=int, default=80, help="fine-tuning iterations")
    parser.add_argument("--model", type=Path, help="a checkpoint to start from instead of the built-in model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="unetseg-shots-"))
    os.environ["NAPARI_UNETSEG_MODELS_DIR"] = str(work / "versions")
    os.environ["NAPARI_CONFIG"] = str(work / "napari" / "settings.yaml")  # leaves the user's settings alone

    import napari

    from napari_unetseg._sample_data import nuclei_2d, nuclei_3d
    from napari_unetseg._widget._main import UNetSegWidget
    from napari_unetseg.synthetic import sample_image_2d

    viewer = napari.Viewer(title="napari-unetseg")
    viewer.window.resize(1500, 1150)
    widget = UNetSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="U-Net Segmentation", area="right")
    if args.model is not None:
        widget.models.add_file(args.model)
    else:
        widget.models.select("nuclei")

    def shot(name: str, paused: bool = False) -> None:
        """Save a screenshot; ``paused``: hold the running job meanwhile (a mid-run picture)."""
        workers = [r.worker for r in (widget.segment.runner, widget.finetune.runner) if r.worker is not None]
        if paused:
            for worker in workers:
                worker.pause()
            # a pause takes effect at the job's next step; a resume before then is ignored, and the
            # pending pause would then hold the job for good
            wait_until(lambda: all(worker.is_paused for worker in workers) or not widget.busy())
        settle()
        viewer.screenshot(str(args.out / name), canvas_only=False)
        print("saved", args.out / name, flush=True)
        for worker in workers if paused else []:
            worker.resume()

    # 1. Segment the 2D sample.
    for data, meta, _ in nuclei_2d():
        image = viewer.add_image(data, **meta)
    widget.image.value = image
    settle(1.0)  # let the window take its size before fitting the image to the canvas
    viewer.reset_view()
    shot("01-widget.png")
    widget.segment.run()
    wait_until(lambda: not widget.busy())
    result = viewer.layers[f"nuclei 2D labels ({widget.models.current().name})"]
    shot("02-segmented-2d.png")

    # 2. Correct the result: start from it, then paint over a few mistakes with the true objects.
    widget.annotate.from_result()
    annotation = widget.annotate.annotations.value
    _, truth = sample_image_2d()
    wrong = _worst_objects(annotation.data, truth, count=6)
    for true_id in wrong:
        annotation.data[truth == true_id] = annotation.data.max() + 1
    annotation.refresh()
    result.visible = False
    shot("03-annotations.png")

    # 3. Fine-tune with live loss, validation score and preview.
    result.visible = True
    annotation.visible = False  # watch the live preview in the labels layer
    widget.finetune.iterations.value = args.iterations
    widget.finetune.fine_tune()
    wait_until(lambda: len(widget.finetune.plot.losses) >= args.iterations // 2)
    shot("04-fine-tuning.png", paused=True)
    wait_until(lambda: not widget.busy())
    shot("05-fine-tuned.png")

    # 4. Where to annotate next.
    result.visible = False
    widget.annotate.where_to_annotate()
    wait_until(lambda: not widget.busy())
    shot("06-uncertainty.png")

    # 5. A 3D stack: the slice in view first, then the rest, objects linked across Z.
    viewer.layers.clear()
    for data, meta, _ in nuclei_3d():
        stack = viewer.add_image(data, **meta)
    widget.image.value = stack
    settle(1.0)
    viewer.reset_view()
    viewer.dims.set_current_step(0, 12)
    widget.segment.batch_size.value = 1
    widget.segment.z_method.value = "linking"  # slice by slice, so the picture shows the slice in view done first
    gate = hold_after(6)
    widget.segment.run()
    wait_until(lambda: widget.segment._done[0] >= 6)
    shot("07-segmenting-3d.png")
    gate.set()
    wait_until(lambda: not widget.busy())
    viewer.dims.order = (1, 0, 2)  # a Z-X section: objects linked across slices keep one colour
    viewer.dims.set_current_step(1, 96)
    settle(1.0)
    viewer.reset_view()
    shot("08-segmented-3d-xz.png")
    viewer.close()
    return 0


def hold_after(count: int) -> threading.Event:
    """Make the next segmentation wait after ``count`` updates until the returned event is set (a mid-run picture)."""
    from napari_unetseg._widget import _segment

    gate, real_job = threading.Event(), _segment.segment_job

    def held(*args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
        _segment.segment_job = real_job
        job = real_job(*args, **kwargs)
        for done in itertools.count(1):
            try:
                update = next(job)
            except StopIteration as stop:
                return stop.value
            yield update
            if done == count:
                gate.wait(timeout=120)

    _segment.segment_job = held
    return gate


def _worst_objects(annotation: np.ndarray, truth: np.ndarray, count: int) -> list[int]:
    """True objects the result got most wrong (lowest overlap with the object painted there)."""
    scores = []
    for true_id in np.unique(truth[truth > 0]):
        mask = truth == true_id
        ids, hits = np.unique(annotation[mask], return_counts=True)
        best = ids[np.argmax(hits)]
        if best < 2:
            scores.append((0.0, int(true_id)))
            continue
        union = np.count_nonzero(mask | (annotation == best))
        scores.append((hits.max() / union, int(true_id)))
    return [true_id for _, true_id in sorted(scores)[:count]]


if __name__ == "__main__":
    sys.exit(main())
