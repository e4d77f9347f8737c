"""The ``unetseg`` command line: segment TIFF and zarr images, score a segmentation, report devices.

Only argument handling lives here; the work is done by :mod:`.io`, :mod:`.inference` and
:mod:`.metrics`, imported by the command that needs them, so ``unetseg --help`` (and a usage
error) answers without loading PyTorch. Bad input (usage errors too) ends with one ``unetseg: error: ...`` line on
stderr and exit status
2, before any output is written; Ctrl-C ends with status 130.

Adding a command (e.g. ``train`` or ``models``): write ``_add_<name>(commands)`` that creates
its sub-parser and sets ``run=<function(args) -> int>``, and list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from .options import BACKENDS, DEFAULT_MODEL, DEVICE_CHOICES, LARGE_RESULT_BYTES, MODES, PRECISIONS, ZARR_SUFFIX

if TYPE_CHECKING:
    from distributed import Client

    from .checkpoint import Checkpoint
    from .inference import AxesLayout

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
TIFF_SUFFIXES = (".tif", ".tiff")


class CliError(Exception):
    """Bad input noticed by the command line itself (printed as one line, exit status 2)."""


# --------------------------------------------------------------------------- helpers


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``unetseg: error:`` line that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"unetseg: error: {' '.join(message.split())}; see {self.prog} --help\n")


def _load_model(spec: str) -> Checkpoint:
    """A checkpoint from a file path or a built-in model name."""
    from .models import resolve_model

    return resolve_model(spec)


def _model_file(checkpoint: Checkpoint | None) -> list[Path]:
    """The file a loaded ``--model`` / ``--init`` came from (a built-in model's too): an input of the command."""
    return [Path(checkpoint.path)] if checkpoint is not None and checkpoint.path is not None else []


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _voxel_size(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected three positive numbers Z,Y,X such as 2,0.5,0.5, got {text!r}")
    return values  # type: ignore[return-value]


def _diameter(text: str) -> float | str | None:
    if text == "auto":
        return "auto"
    value = _positive_float(text) if text.strip() not in ("0", "0.0") else 0.0
    return value or None


def _class_pair(text: str) -> tuple[int, int]:
    """``"2,255"`` -> (2, 255) (prediction value, truth value); ``"2"`` -> (2, 2)."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected VALUE or PRED_VALUE,TRUTH_VALUE, got {text!r}")
    values = [int(part) for part in parts]
    return values[0], values[-1]


def _stem(path: Path) -> str:
    """File name without its image suffix(es): ``cells.ome.tif`` -> ``cells``, ``em.ome.zarr`` -> ``em``."""
    name = path.name
    for suffix in (".tif", ".tiff", ZARR_SUFFIX, ".ome"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.stem


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    """``[####    ] 12/32 planes 3.1 planes/s ETA 6s`` on stderr, redrawn in place on a terminal.

    When the stream is not a terminal (a log file, a pipe) only the final state is written, so
    logs are not flooded with carriage returns. Call it as ``progress(done, total)``. With a time
    ``budget`` (seconds) the work may end before ``total``: the bar and the ETA follow whichever
    ends first, the count or the time.
    """

    def __init__(
        self, label: str, stream: TextIO, enabled: bool = True, width: int = 24, unit: str = "planes",
        budget: float | None = None,
    ) -> None:
        self.label = label
        self.unit = unit
        self.budget = budget
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.interactive = enabled and stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.line = ""

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = done / elapsed
        fraction = done / total if total else 1.0
        left = (total - done) / rate if 0 < done < total else None
        clock = ""
        if self.budget is not None and done < total:
            fraction = max(fraction, min(elapsed / self.budget, 1.0))
            time_left = max(self.budget - elapsed, 0.0)
            left = time_left if left is None else min(left, time_left)
            clock = f" {_format_seconds(elapsed)} of {_format_seconds(self.budget)}"
        filled = int(self.width * min(fraction, 1.0))
        eta = f" ETA {_format_seconds(left)}" if left is not None else ""
        line = (
            f"{self.label} [{'#' * filled}{' ' * (self.width - filled)}] {done}/{total} {self.unit}{clock} "
            f"{rate:.1f} {self.unit}/s{eta}"
        )
        if self.interactive and (done == total or time.monotonic() - self.last_draw >= 0.1):
            self.stream.write("\r" + line.ljust(len(self.line)))
            self.stream.flush()
            self.last_draw = time.monotonic()
        self.line = line

    def close(self) -> None:
        """End the bar's line (or write the final state when not on a terminal)."""
        if self.line:
            self.stream.write("\n" if self.interactive else self.line + "\n")
            self.stream.flush()
        self.line = ""


@contextmanager
def _tifffile_warnings() -> Iterator[None]:
    """Show tifffile's complaints about damaged files as ``unetseg: warning: ...`` lines."""
    logger = logging.getLogger("tifffile")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unetseg: warning: %(message)s"))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


# --------------------------------------------------------------------------- segment


def _add_segment(commands: argparse._SubParsersAction) -> None:
    from .cli_measure import add_scale_options

    parser = commands.add_parser(
        "segment",
        help="segment TIFF or zarr images, here or on a dask cluster, writing one label image per input",
        description=(
            "Segment each INPUT with a U-Net and write its labels as a TIFF or a zarr store: instance ids "
            "(uint32) for instance models, class values 1..K for semantic models. Stacks larger than memory "
            "are read and written plane by plane. All inputs and outputs are checked before the first image "
            "is processed."
        ),
        epilog=(
            "examples:\n"
            f"  unetseg segment cells.tif -o cells_labels.tif                  # the built-in {DEFAULT_MODEL} model\n"
            "  unetseg segment a.tif b.tif -o results/ --model em-membranes   # results/a_labels.tif, ...\n"
            "  unetseg segment stack.tif -o stack_labels.tif --axes ZYX --stitch-z\n"
            "  unetseg segment cells.tif -o cells_labels.tif --model cells-ft1.pt   # a checkpoint file\n"
            "  unetseg segment volume.ome.zarr -o volume_labels.zarr --workers 4\n"
            "  unetseg segment a.tif b.tif -o results/ --measurements tables/   # also tables/a_measurements.csv, ...\n"
            "  unetseg segment volume.ome.zarr -o volume_labels.zarr --scheduler tcp://10.0.0.5:8786\n"
            "\n"
            "'unetseg models' lists the built-in model names."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=Path,
        help="TIFF image(s), zarr array(s) or OME-Zarr image(s) (the full-resolution level is used)",
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path,
        help="output .tif or .zarr for a single input, or a folder that gets <name>_labels.tif per input "
        f"(<name>_labels.zarr for results over {LARGE_RESULT_BYTES >> 30} GiB; created if missing)",
    )
    parser.add_argument(
        "-m", "--model", default=DEFAULT_MODEL,
        help=f"checkpoint file (.pt) or built-in model name (default: {DEFAULT_MODEL}; see 'unetseg models')",
    )
    parser.add_argument(
        "--device", default="auto", metavar="{" + ",".join(DEVICE_CHOICES) + "}",
        help="compute device; auto = CUDA, then Apple MPS, then CPU (default: auto)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="planes or tiles per batch (default: 4)")
    parser.add_argument(
        "--tile-size", type=_positive_int, default=1024,
        help="planes larger than this are cut into overlapping tiles (default: 1024)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="auto = float16 on CUDA; bfloat16 on CPUs with native bfloat16 when a probe shows it keeps the "
        "model's float32 labels; else float32 (default: auto)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="auto = ONNX Runtime for float32 on the CPU when installed (pip install 'napari-unetseg[onnx]'), "
        "else PyTorch (default: auto)",
    )
    parser.add_argument(
        "--axes",
        help="axis order of the inputs, e.g. YX, ZYX, TZYX, YXC, CZYX (C = channel); default: as "
        "stored in the file, else inferred (Z before YX, T before Z, a last axis of 3 or 4 is RGB)",
    )
    parser.add_argument("--stitch-z", action="store_true",
                        help="one id per 3D object: XY, XZ and YZ planes through the network, then 3D watershed")
    parser.add_argument("--z-method", choices=["consensus", "linking"], default="consensus",
                        help="with --stitch-z: consensus (default) or linking each plane's objects to the plane before "
                             "(what the cluster path does)")
    parser.add_argument("--voxel-size", type=_voxel_size, metavar="Z,Y,X",
                        help="voxel size along Z, Y and X (any unit) for --stitch-z; default: cubic voxels")
    parser.add_argument("--diameter", type=_diameter, default="auto", metavar="PX|auto",
                        help="object diameter in pixels for --stitch-z: stacks with larger objects are shrunk to the "
                             "model's size (default auto: measured from a first pass; 0 keeps the stack's scale)")
    parser.add_argument(
        "--measurements", type=Path, metavar="CSV|FOLDER",
        help="also write a table of the objects (see 'unetseg measure'): this .csv for a single input, or "
        "<name>_measurements.csv per input in this folder",
    )
    add_scale_options(parser)
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run on the dask.distributed cluster of this scheduler (e.g. tcp://10.0.0.5:8786); its workers "
        "must see the inputs, the outputs and the model file at the same paths",
    )
    cluster.add_argument(
        "--workers", type=_positive_int, metavar="N",
        help="run on N dask.distributed worker processes started on this machine",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing unless something fails")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="with --workers, also show the dask cluster's own log messages (hidden by default)",
    )
    parser.set_defaults(run=_run_segment)


def _plan_outputs(
    inputs: list[Path], output: Path, overwrite: bool, sizes: Sequence[int], extra_inputs: Sequence[Path] = ()
) -> list[tuple[Path, Path]]:
    """Pair every input with its output; refuse clashes and existing outputs before any work.

    ``sizes`` (bytes of each input's labels) choose TIFF or zarr when ``output`` is a folder;
    ``extra_inputs`` (e.g. the model file) must not be overwritten either.
    """
    from .io import is_zarr_store

    suffix = output.suffix.lower()
    if suffix == ZARR_SUFFIX or (suffix in TIFF_SUFFIXES and not output.is_dir()):
        if len(inputs) > 1:
            raise CliError(f"{len(inputs)} inputs need a folder as output, not the file name {output}")
        jobs = [(inputs[0], output)]
    else:
        if output.suffix and not output.is_dir():
            raise CliError(
                f"{output}: labels are written as TIFF or zarr; end the file name in .tif or .zarr, or give "
                "a folder (an existing one, or a name without a suffix)"
            )
        if output.exists() and not output.is_dir():
            raise CliError(f"{output} is a file; the output must be a folder")
        jobs = [
            (src, output / f"{_stem(src)}_labels{ZARR_SUFFIX if size > LARGE_RESULT_BYTES else '.tif'}")
            for src, size in zip(inputs, sizes)
        ]
    claimed: dict[Path, Path] = {}
    _refuse_outputs_over_inputs([dst for _, dst in jobs], [*inputs, *extra_inputs])
    for src, dst in jobs:
        key = dst.resolve()
        if key in claimed:
            raise CliError(f"{claimed[key]} and {src} would both be written to {dst}")
        claimed[key] = src
        if dst.is_dir() and not (dst.suffix.lower() == ZARR_SUFFIX and is_zarr_store(dst)):
            raise CliError(f"output {dst} is a folder")
        if dst.exists() and not overwrite:
            raise FileExistsError(f"{dst} already exists; use --overwrite to replace it")
        _check_writable_folder(dst.parent)
    return jobs


def _refuse_outputs_over_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
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
                raise CliError(f"output {dst} would overwrite the input {src}; choose another output")


def _check_writable_folder(folder: Path) -> None:
    """Fail now if ``folder`` cannot be created or written, rather than after the first image."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"cannot create folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{existing}: permission denied (cannot write output there)")


@contextmanager
def _cluster_client(args: argparse.Namespace) -> Iterator[Client | None]:
    """A dask.distributed client for ``--scheduler`` or ``--workers``; None to segment in this process."""
    if args.scheduler is None and args.workers is None:
        yield None
        return
    try:
        from .distributed import connect, local_client
    except ImportError as exc:
        raise CliError(
            f"--scheduler and --workers need dask.distributed ({exc.name} is not installed): "
            "pip install 'napari-unetseg[distributed]'"
        ) from None
    with connect(args.scheduler) if args.scheduler is not None else local_client(args.workers, args.verbose) as client:
        yield client


def _segment_into(
    out: Any, src: Path, layout: AxesLayout, checkpoint: Checkpoint, client: Client | None, device: Any,
    args: argparse.Namespace, progress: ProgressBar,
) -> None:
    """Segment ``src`` into ``out``: in this process, or as tasks on the cluster of ``client``."""
    from .inference import segment
    from .io import read_image

    options = {
        "axes": layout.axes, "device": device, "batch_size": args.batch_size, "tile_size": args.tile_size,
        "precision": args.precision, "backend": args.backend, "stitch_z": args.stitch_z, "progress": progress,
    }
    if client is None:
        segment(read_image(src), checkpoint, out=out, z_method=args.z_method, voxel_size=args.voxel_size,
                diameter=args.diameter, **options)
        return
    if args.stitch_z and args.z_method == "consensus":
        print("unetseg: on a cluster, objects are linked plane to plane (--z-method linking)", file=sys.stderr)
    from .distributed import segment_distributed

    segment_distributed(src, out, checkpoint, client, **options)


def _engine_parameters(args: argparse.Namespace, device: Any, layout: AxesLayout, shape: Sequence[int]) -> dict:
    """The options of one input's segmentation, as recorded in its output's provenance."""
    return {
        "device": str(device), "precision": args.precision, "backend": args.backend, "tile_size": args.tile_size,
        "batch_size": args.batch_size, "axes": layout.axes, "stitch_z": args.stitch_z, "shape": list(shape),
    }


def _run_segment(args: argparse.Namespace) -> int:
    from .cli_measure import channel_last, make_table, plan_segment_measurements, write_table
    from .device import get_device
    from .inference import labels_spec, parse_axes
    from .io import ImageReadError, labels_output, probe_image, read_image
    from .normalize import check_image
    from .provenance import RECORD_KEY, make_record

    infos = [probe_image(src) for src in args.inputs]
    layouts = []
    for src, info in zip(args.inputs, infos):
        check_image(info, str(src))
        try:
            layouts.append(parse_axes(info.shape, args.axes or info.axes))
        except ValueError as exc:
            raise CliError(f"{src}: {exc}") from None
    # the workers of a remote scheduler choose their device; this machine need not have it
    device: Any = args.device if args.scheduler is not None else get_device(args.device)
    checkpoint = _load_model(args.model)
    specs = [labels_spec(info.shape, layout, checkpoint.info.mode) for info, layout in zip(infos, layouts)]
    sizes = [math.prod(s) * d.itemsize for s, d in specs]
    jobs = _plan_outputs(args.inputs, args.output, args.overwrite, sizes, _model_file(checkpoint))
    label_axes = [layout.output_axes() for layout in layouts]
    tables = plan_segment_measurements(args, jobs, label_axes, _model_file(checkpoint))
    with _cluster_client(args) as client:
        for number, ((src, dst), layout, info, (shape, dtype), table_path) in enumerate(
            zip(jobs, layouts, infos, specs, tables), start=1
        ):
            started = time.monotonic()
            record = make_record(checkpoint, _engine_parameters(args, device, layout, info.shape), src, dst)
            label = src.name if len(jobs) == 1 else f"({number}/{len(jobs)}) {src.name}"
            bar = ProgressBar(label, sys.stderr, enabled=not args.quiet)
            # cluster workers write into a store; in this process small results stay in memory
            in_memory = False if client is not None else None
            try:
                with labels_output(
                    dst, shape, dtype, overwrite=args.overwrite, in_memory=in_memory, metadata={RECORD_KEY: record}
                ) as out:
                    _segment_into(out, src, layout, checkpoint, client, device, args, bar)
                    if table_path is not None:  # measured before the labels are written; written after them
                        image = channel_last(read_image(src), layout.channel_axis)
                        table = make_table(out, image, layout.output_axes(), args, str(src))
            except ImageReadError:
                raise
            except ValueError as exc:  # e.g. the model needs another number of channels
                raise CliError(f"{src}: {_one_line(exc)}") from None
            finally:
                bar.close()
            if not args.quiet:
                shape_text = "x".join(map(str, shape))
                print(f"wrote {dst} ({shape_text} {dtype}, {time.monotonic() - started:.1f}s)", file=sys.stderr)
            if table_path is not None:
                write_table(table, table_path, args)
    return 0


# --------------------------------------------------------------------------- evaluate


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score a segmentation against ground truth, printed as JSON",
        description=(
            "Compare PREDICTION with TRUTH (label TIFFs of the same shape) and print the scores as JSON. "
            "instance: object precision, recall and F1 at IoU 0.5, their means over IoU 0.5-0.9, and the "
            "adapted Rand error. semantic: pixel error and per-class IoU; with --foreground also the "
            "adapted Rand error of the foreground's connected components (ISBI 2012 style)."
        ),
        epilog=(
            "examples:\n"
            "  unetseg evaluate cells_labels.tif cells_truth.tif\n"
            "  unetseg evaluate em_classes.tif train-labels.tif --mode semantic --foreground 2,255"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prediction", metavar="PREDICTION", type=Path, help="predicted labels (TIFF)")
    parser.add_argument("truth", metavar="TRUTH", type=Path, help="ground-truth labels (TIFF)")
    parser.add_argument("--mode", choices=MODES, default="instance", help="kind of labels (default: instance)")
    parser.add_argument(
        "--per-slice", action=argparse.BooleanOptionalAction, default=None,
        help="score each 2D plane of a stack on its own (default: 3D objects in instance mode, "
        "per section in semantic mode)",
    )
    parser.add_argument(
        "--foreground", type=_class_pair, metavar="VALUE[,TRUTH_VALUE]",
        help="semantic mode: the 'cell' class value in the prediction (and in the truth, if different), "
        "e.g. 2,255 for ISBI 2012",
    )
    parser.add_argument("--ignore", type=int, metavar="VALUE", help="semantic mode: truth value to leave out")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .io import probe_image, read_image
    from .metrics import check_label_image, evaluate

    for path in (args.prediction, args.truth):
        probe_image(path)
    prediction, truth = np.asarray(read_image(args.prediction)), np.asarray(read_image(args.truth))
    for path, labels in ((args.prediction, prediction), (args.truth, truth)):
        check_label_image(labels, str(path))
    if prediction.shape != truth.shape:
        raise CliError(f"{args.prediction} has shape {prediction.shape} but {args.truth} has {truth.shape}")
    scores = evaluate(
        prediction, truth, args.mode, per_slice=args.per_slice, foreground=args.foreground, ignore=args.ignore
    )
    print(json.dumps(scores, indent=2))
    return 0


# --------------------------------------------------------------------------- train


def _add_train(commands: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--iterations", type=_positive_int, default=300, help="training iterations (default: 300)")
    parser.add_argument(
        "--max-seconds", type=_positive_float,
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
    from .training import TrainConfig, train

    for path in (args.image, args.labels):
        probe_image(path)
    parent = _load_model(args.init) if args.init else None
    _refuse_outputs_over_inputs([args.output], [args.image, args.labels, *_model_file(parent)])
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} already exists; use --overwrite to replace it")
    _check_writable_folder(args.output.parent)
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
        ended = f"the {_format_seconds(args.max_seconds)} time budget ended after {done} of {args.iterations} iterations; "
    return ended + result.outcome(parent.info.name if parent else "the new network")


def _print_painting_advice(labels: Any, mode: str | None, parent: Checkpoint | None) -> None:
    from .targets import painting_advice

    mode = mode or (parent.info.mode if parent is not None else "instance")
    fine_tuning = parent is not None and parent.info.mode == mode
    for advice in painting_advice([labels], mode, fine_tuning):
        print(f"note: {advice}", file=sys.stderr)


# --------------------------------------------------------------------------- measure


def _add_measure(commands: argparse._SubParsersAction) -> None:
    from .cli_measure import add_measure  # imported here: that module builds on this one's helpers

    add_measure(commands)


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

#: Each adds one sub-command to the parser; see the module docstring.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_segment, _add_train, _add_evaluate, _add_measure, _add_models, _add_devices, _add_gui
)


def build_parser() -> argparse.ArgumentParser:
    """The ``unetseg`` argument parser with every command in :data:`COMMANDS`."""
    parser = _Parser(
        prog="unetseg",
        description="U-Net segmentation of microscopy images from the command line.",
        epilog="Run 'unetseg COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """What ends as one error line: ours, bad values, files, and a missing device if a command asked for one.

    (The device module is imported only by the commands that use it, so its error class is looked
    up when an error is being handled.)
    """
    device = sys.modules.get(f"{__package__}.device")
    return (CliError, ValueError, OSError, *((device.DeviceUnavailableError,) if device is not None else ()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``unetseg`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    try:
        with _tifffile_warnings():
            return args.run(args)
    except KeyboardInterrupt:
        print("unetseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _bad_input_errors() as exc:
        print(f"unetseg: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
