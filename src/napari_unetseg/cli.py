"""The ``unetseg`` command line: segment TIFF and zarr images, train, score, measure, list models and devices.

Each command lives in its own module (:mod:`.cli_segment`, :mod:`.cli_train`, :mod:`.cli_measure`;
the small ``models``, ``gui`` and ``devices`` here) and only handles arguments: the work is done
by the core modules, imported by the command that needs them, so ``unetseg --help`` (and a usage
error) answers without loading PyTorch. Bad input (usage errors too) ends with one
``unetseg: error: ...`` line on stderr and exit status 2, before any output is written; Ctrl-C ends
with status 130.

Adding a command: write ``add_<name>(commands)`` that creates its sub-parser and sets
``run=<function(args) -> int>``, and list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .cli_common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CliError, Parser, one_line
from .cli_export import add_export
from .cli_measure import add_measure
from .cli_segment import add_evaluate, add_segment
from .cli_train import add_train
from .options import DEFAULT_MODEL


# --------------------------------------------------------------------------- models


def _add_models(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="list the built-in models, or the ancestry of a fine-tuned one",
        description=(
            "List the models shipped with napari-unetseg: name, mode, classes, size, training data, metrics. "
            f"The default model ({DEFAULT_MODEL}, used when --model is not given) is marked [default]. "
            "With --history, show the chain of models a fine-tuned checkpoint descends from instead."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--history", metavar="NAME_OR_PATH",
        help="a checkpoint file, built-in model or saved version (e.g. nuclei-ft2): show its parent chain",
    )
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .models import list_models

    if args.history is not None:
        from .provenance import format_history, model_history

        chain = model_history(args.history)
        print(json.dumps(chain, indent=2) if args.json else "\n".join(format_history(chain)))
        return 0
    rows = [{**row, "default": row["name"] == DEFAULT_MODEL} for row in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        metrics = ", ".join(f"{k} {v}" for k, v in row["metrics"].items())
        default = " [default]" if row["default"] else ""
        print(f"{row['name']}{default}  ({row['mode']}; classes: {', '.join(row['classes'])}; "
              f"{row['parameters'] / 1e6:.2f} M parameters, {row['size_mb']} MB)")
        print(f"    {row['description']}")
        print(f"    trained on: {row['training_data']}")
        print(f"    metrics: {metrics or 'none recorded'}")
    return 0


# --------------------------------------------------------------------------- gui


def _add_gui(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "gui",
        help="open napari with the U-Net Segmentation widget and an image (default: sample nuclei)",
        description="Open napari with the U-Net Segmentation widget docked and IMAGE, or the sample data, loaded.",
    )
    parser.add_argument("image", metavar="IMAGE", type=Path, nargs="?", help="image to open (default: sample data)")
    parser.add_argument("--sample", choices=["nuclei-2d", "nuclei-3d"], default="nuclei-2d",
                        help="sample to open when no IMAGE is given (default: nuclei-2d)")
    parser.set_defaults(run=_run_gui)


def _run_gui(args: argparse.Namespace) -> int:
    from .io import probe_image

    if args.image is not None:
        probe_image(args.image)
    try:
        from ._widget._launch import open_viewer
    except ImportError as exc:
        raise CliError(f"the viewer needs napari ({exc.name} is missing): pip install 'napari-unetseg[all]'") from None
    open_viewer(args.image, args.sample)
    return 0


# --------------------------------------------------------------------------- devices


def _add_devices(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "devices",
        help="show which compute devices PyTorch can use, and why not a GPU",
        description="Show the devices PyTorch can use here; without a GPU, say why and how to fix it.",
    )
    parser.set_defaults(run=_run_devices)


def _run_devices(args: argparse.Namespace) -> int:
    from .device import explain_devices

    print(explain_devices().summary())
    return 0


# --------------------------------------------------------------------------- entry point


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show tifffile's complaints about damaged files, and the engine's own warnings (e.g. a batch size
    lowered after running out of memory), as ``unetseg: warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unetseg: warning: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("tifffile", __package__)]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, before in zip(loggers, propagate):
            logger.removeHandler(handler)
            logger.propagate = before


#: Each adds one sub-command to the parser; see the module docstring.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_segment, add_train, add_evaluate, add_measure, _add_models, _add_devices, _add_gui
)


def build_parser() -> argparse.ArgumentParser:
    """The ``unetseg`` argument parser with every command in :data:`COMMANDS`."""
    parser = Parser(
        prog="unetseg",
        description="U-Net segmentation of microscopy images from the command line.",
        epilog="Run 'unetseg COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    add_export(commands)
    return parser


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """What ends as one error line: ours, bad values, files, and a missing device or too little memory
    for it (out of memory even at batch size 1; the message says what to try).

    (The device module is imported only by the commands that use it, so its error classes are looked
    up when an error is being handled.)
    """
    device = sys.modules.get(f"{__package__}.device")
    found = (device.DeviceUnavailableError, device.OutOfMemoryError) if device is not None else ()
    return (CliError, ValueError, OSError, *found)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``unetseg`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    try:
        with _warnings_as_lines():
            return args.run(args)
    except KeyboardInterrupt:
        print("unetseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _bad_input_errors() as exc:
        print(f"unetseg: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
