"""``unetseg segment`` and ``unetseg evaluate``: label images from images, and their scores against truth.

Argument handling only: :mod:`.inference` (or :mod:`.distributed` on a cluster) does the work,
:mod:`.outputs` decides where results go and refuses outputs that would lose data, and
:mod:`.provenance` records what made each result. Heavy modules are imported by the command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import CliError, ProgressBar, load_model, model_file, one_line, positive_float, positive_int
from .engine_settings import EngineSettings
from .options import BACKENDS, DEFAULT_MODEL, DEVICE_CHOICES, LARGE_RESULT_BYTES, MODES, PRECISIONS

#: The engine's defaults, the command line's too (one default for every front).
DEFAULTS = EngineSettings()

if TYPE_CHECKING:
    from distributed import Client

    from .axes import AxesLayout
    from .checkpoint import Checkpoint
    from .io import ImageInfo


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
    value = positive_float(text) if text.strip() not in ("0", "0.0") else 0.0
    return value or None




def add_segment(commands: argparse._SubParsersAction) -> None:
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
        "--device", default=DEFAULTS.device, metavar="{" + ",".join(DEVICE_CHOICES) + "}",
        help="compute device; auto = CUDA, then Apple MPS, then CPU (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                        help="planes or tiles per batch (default: %(default)s)")
    parser.add_argument(
        "--tile-size", type=positive_int, default=DEFAULTS.tile_size,
        help="planes larger than this are cut into overlapping tiles (default: %(default)s)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=DEFAULTS.precision,
        help="auto = float16 on CUDA; bfloat16 on CPUs with native bfloat16 when a probe shows it keeps the "
        "model's float32 labels; else float32 (default: %(default)s)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULTS.backend,
        help="auto = ONNX Runtime for float32 on the CPU when installed (pip install 'napari-unetseg[onnx]'), "
        "else PyTorch (default: %(default)s)",
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
                        help="voxel size along Z, Y and X (any unit) for --stitch-z; default: the size an OME or ImageJ "
                             "TIFF or an OME-Zarr records, else cubic voxels")
    parser.add_argument("--diameter", type=_diameter, default="auto", metavar="PX|auto",
                        help="object diameter in pixels (instance models): images whose objects are much larger than "
                             "the model's are shrunk to its size and the labels resized back (default auto: measured "
                             "from a first pass over a few planes; 0 keeps the image's scale)")
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
        "--workers", type=positive_int, metavar="N",
        help="run on N dask.distributed worker processes started on this machine",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing unless something fails")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="with --workers, also show the dask cluster's own log messages (hidden by default)",
    )
    parser.set_defaults(run=_run_segment)


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
    out: Any, src: Path, layout: AxesLayout, checkpoint: Checkpoint, client: Client | None,
    settings: EngineSettings, args: argparse.Namespace, progress: ProgressBar, voxel_size: Sequence[float] | None,
) -> None:
    """Segment ``src`` into ``out``: in this process, or as tasks on the cluster of ``client``."""
    from .inference import segment
    from .io import read_image

    options = {"axes": layout.axes, "stitch_z": args.stitch_z, "progress": progress}
    if client is None:
        segment(read_image(src), checkpoint, settings, out=out, z_method=args.z_method, voxel_size=voxel_size,
                diameter=args.diameter, **options)
        return
    from .distributed import segment_distributed

    segment_distributed(src, out, checkpoint, client, settings, z_method=args.z_method, voxel_size=voxel_size,
                        diameter=args.diameter, **options)


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The engine settings of the options, with ``--device`` resolved here unless a remote scheduler's workers
    choose it (this machine need not have their device)."""
    from .device import get_device

    device = args.device if args.scheduler is not None else str(get_device(args.device))
    return EngineSettings(device=device, batch_size=args.batch_size, tile_size=args.tile_size,
                          precision=args.precision, backend=args.backend)


def _stack_voxel_size(args: argparse.Namespace, src: Path, info: ImageInfo, layout: AxesLayout) -> Sequence[float] | None:
    """The voxel size (Z, Y, X) of a 3D run: ``--voxel-size``, else what the file records (said unless quiet)."""
    if not args.stitch_z or args.voxel_size is not None or "Z" not in layout.axes or info.pixel_size is None:
        return args.voxel_size
    recorded = info.pixel_size.along("ZYX")
    if recorded is not None and not args.quiet:
        print(f"unetseg: {src.name}: voxel size {info.pixel_size.describe('ZYX')} (Z,Y,X) from the file",
              file=sys.stderr)
    return recorded


def _engine_parameters(
    args: argparse.Namespace, settings: EngineSettings, layout: AxesLayout, shape: Sequence[int],
    voxel_size: Sequence[float] | None,
) -> dict:
    """The options of one input's segmentation, as recorded in its output's provenance."""
    parameters = {**settings.as_record(), "axes": layout.axes, "stitch_z": args.stitch_z, "shape": list(shape),
                  "diameter": args.diameter}
    if args.stitch_z:
        parameters.update(z_method=args.z_method, voxel_size=voxel_size)
    return parameters


def _run_segment(args: argparse.Namespace) -> int:
    from .axes import labels_spec, parse_axes
    from .cli_measure import channel_last, make_table, plan_segment_measurements, write_table
    from .io import ImageReadError, labels_output, probe_image, read_image
    from .normalize import check_image
    from .outputs import plan_label_outputs
    from .provenance import RECORD_KEY, make_record

    infos = [probe_image(src) for src in args.inputs]
    layouts = []
    for src, info in zip(args.inputs, infos):
        check_image(info, str(src))
        try:
            layouts.append(parse_axes(info.shape, args.axes or info.axes))
        except ValueError as exc:
            raise CliError(f"{src}: {exc}") from None
    settings = _engine_settings(args)
    checkpoint = load_model(args.model)
    specs = [labels_spec(info.shape, layout, checkpoint.info.mode) for info, layout in zip(infos, layouts)]
    sizes = [math.prod(s) * d.itemsize for s, d in specs]
    jobs = plan_label_outputs(args.inputs, args.output, args.overwrite, sizes, model_file(checkpoint))
    label_axes = [layout.output_axes() for layout in layouts]
    tables = plan_segment_measurements(args, jobs, label_axes, model_file(checkpoint))
    with _cluster_client(args) as client:
        for number, ((src, dst), layout, info, (shape, dtype), table_path) in enumerate(
            zip(jobs, layouts, infos, specs, tables), start=1
        ):
            started = time.monotonic()
            voxel_size = _stack_voxel_size(args, src, info, layout)
            parameters = _engine_parameters(args, settings, layout, info.shape, voxel_size)
            record = make_record(checkpoint, parameters, src, dst)
            label = src.name if len(jobs) == 1 else f"({number}/{len(jobs)}) {src.name}"
            bar = ProgressBar(label, sys.stderr, enabled=not args.quiet)
            # cluster workers write into a store; in this process small results stay in memory
            in_memory = False if client is not None else None
            try:
                with labels_output(
                    dst, shape, dtype, overwrite=args.overwrite, in_memory=in_memory, metadata={RECORD_KEY: record}
                ) as out:
                    _segment_into(out, src, layout, checkpoint, client, settings, args, bar, voxel_size)
                    if table_path is not None:  # measured before the labels are written; written after them
                        image = channel_last(read_image(src), layout.channel_axis)
                        table = make_table(out, image, layout.output_axes(), args, str(src), [info.pixel_size])
            except ImageReadError:
                raise
            except ValueError as exc:  # e.g. the model needs another number of channels
                raise CliError(f"{src}: {one_line(exc)}") from None
            finally:
                bar.close()
            if not args.quiet:
                shape_text = "x".join(map(str, shape))
                print(f"wrote {dst} ({shape_text} {dtype}, {time.monotonic() - started:.1f}s)", file=sys.stderr)
            if table_path is not None:
                write_table(table, table_path, args)
    return 0


# --------------------------------------------------------------------------- evaluate


def _class_pair(text: str) -> tuple[int, int]:
    """``"2,255"`` -> (2, 255) (prediction value, truth value); ``"2"`` -> (2, 2)."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected VALUE or PRED_VALUE,TRUTH_VALUE, got {text!r}")
    values = [int(part) for part in parts]
    return values[0], values[-1]


def add_evaluate(commands: argparse._SubParsersAction) -> None:
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
