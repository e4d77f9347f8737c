"""``unetseg train``: train or fine-tune a model from an image and its painted annotation.

Argument handling and what is printed; :mod:`.training` does the work. The checkpoint is written
only after training ends, atomically, and an existing file is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import ProgressBar, format_seconds, load_model, model_file, positive_float, positive_int
from .options import DEVICE_CHOICES, MODES

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


def add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train or fine-tune a model from an image and its (sparse) annotation",
        description=(
            "Train a U-Net on IMAGE with the painted LABELS (same shape): 0 = not annotated, 1 = background, "
            "2+ = objects (instance mode) or label k = class k (semantic mode). With --init the training starts "
            "from that model (fine-tuning); the best weights are written to OUT as a new checkpoint."
        ),
        epilog=(
            "examples:\n"
            "  unetseg train cells.tif strokes.tif -o cells-ft1.pt --init nuclei --max-seconds 120\n"
            "  unetseg train em.tif em_labels.tif -o em.pt --mode semantic --iterations 2000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", type=Path, help="image TIFF")
    parser.add_argument("labels", metavar="LABELS", type=Path, help="annotation TIFF of the same shape")
    parser.add_argument("-o", "--output", required=True, type=Path, help="checkpoint file to write (.pt)")
    parser.add_argument("--init", metavar="NAME|PATH", help="start from this built-in model or checkpoint")
    parser.add_argument("--mode", choices=MODES, help="instance or semantic (default: the --init model's, else instance)")
    parser.add_argument("--iterations", type=positive_int, default=300, help="training iterations (default: 300)")
    parser.add_argument(
        "--max-seconds", type=positive_float,
        help="stop after this many seconds (at least one iteration runs), keeping the best weights",
    )
    parser.add_argument("--freeze-encoder", action="store_true", help="train only the decoder (faster fine-tuning)")
    parser.add_argument(
        "--device", default="auto", metavar="{" + ",".join(DEVICE_CHOICES) + "}", help="compute device (default: auto)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing unless something fails")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import save_checkpoint
    from .device import get_device
    from .io import probe_image, read_image
    from .metrics import check_label_image
    from .normalize import check_image
    from .outputs import check_writable_folder, refuse_existing, refuse_outputs_over_inputs
    from .training import TrainConfig, train

    for path in (args.image, args.labels):
        probe_image(path)
    parent = load_model(args.init) if args.init else None
    refuse_outputs_over_inputs([args.output], [args.image, args.labels, *model_file(parent)])
    refuse_existing(args.output, args.overwrite)
    check_writable_folder(args.output.parent)
    image, labels = np.asarray(read_image(args.image)), np.asarray(read_image(args.labels))
    check_image(image, str(args.image))
    check_label_image(labels, str(args.labels))
    get_device(args.device)
    config = TrainConfig(
        mode=args.mode, iterations=args.iterations, max_seconds=args.max_seconds, seed=args.seed,
        freeze_encoder=args.freeze_encoder, device=args.device, name=args.output.stem,
    )
    bar = ProgressBar("train", sys.stderr, enabled=not args.quiet, unit="iterations", budget=args.max_seconds)

    def report(step) -> None:
        if step.iteration == 1 and not args.quiet:  # the annotation was accepted: say what it cannot teach
            _print_painting_advice(labels, args.mode, parent)
        score = "" if step.val_score is None else f" val {step.val_score:.3f}"
        bar.label = f"train loss {step.loss:.4f}{score}"
        bar(step.iteration, step.total_iterations)

    try:
        result = train(image, labels, parent, config, progress=report)
    finally:
        bar.close()
    if parent is not None and Path(args.init).is_file():  # the name alone may not find it again ('models --history')
        result.info.training["parent_file"] = str(Path(args.init).absolute())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.output, result.model, result.info, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {args.output}: {_training_summary(result, args, parent)}", file=sys.stderr)
    return 0


def _training_summary(result: Any, args: argparse.Namespace, parent: Checkpoint | None) -> str:
    """How the training ended and which weights were written, in plain words."""
    done = result.history[-1].iteration if result.history else 0
    ended = ""
    if args.max_seconds is not None and done < args.iterations and not result.stopped:
        ended = f"the {format_seconds(args.max_seconds)} time budget ended after {done} of {args.iterations} iterations; "
    return ended + result.outcome(parent.info.name if parent else "the new network")


def _print_painting_advice(labels: Any, mode: str | None, parent: Checkpoint | None) -> None:
    from .targets import painting_advice

    mode = mode or (parent.info.mode if parent is not None else "instance")
    fine_tuning = parent is not None and parent.info.mode == mode
    for advice in painting_advice([labels], mode, fine_tuning):
        print(f"note: {advice}", file=sys.stderr)
