"""``unetseg measure`` and ``unetseg segment --measurements``: object tables of label images as CSV files.

:mod:`.cli` builds the parser with :func:`add_measure`; :mod:`.cli_segment` calls the
``--measurements`` helpers here. Like every command, bad input ends as
one ``unetseg: error:`` line and exit status 2 with nothing written; the work is done by
:mod:`.measurements`, imported when a table is made (it loads scikit-image).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import CliError
from .outputs import check_writable_folder, file_stem, refuse_existing, refuse_outputs_over_inputs

if TYPE_CHECKING:
    from .scales import PixelSize

CSV_SUFFIX = ".csv"


def pixel_size(text: str) -> tuple[float, ...]:
    """``"0.5"`` -> (0.5,); ``"2,0.5,0.5"`` -> (2.0, 0.5, 0.5): positive numbers, one per axis or one for all."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (2,0.5,0.5), got {text!r}") from None
    if not all(value > 0 and value < float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"pixel sizes must be positive numbers, got {text!r}")
    return values


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """``--pixel-size`` and ``--unit``, shared by ``measure`` and ``segment --measurements``."""
    parser.add_argument(
        "--pixel-size", type=pixel_size, metavar="SIZE[,SIZE...]",
        help="pixel size along each spatial axis of the labels (Z,Y,X or Y,X), or one size for all; adds "
        "area_<unit>2 / volume_<unit>3 columns (default: the size an OME or ImageJ TIFF or an OME-Zarr records, "
        "in um; else pixels only)",
    )
    parser.add_argument("--unit", default="um", help="unit of --pixel-size, used in column names (default: um)")


def add_measure(commands: argparse._SubParsersAction) -> None:
    """The ``measure`` sub-command."""
    parser = commands.add_parser(
        "measure",
        help="measure the objects of a label image (size, centroid, bounding box, intensity) into a CSV file",
        description=(
            "Write one CSV row per object of LABELS: label, area (2D) or volume and slices (3D), centroid and "
            "bounding box in pixels, and with IMAGE the mean, min and max intensity (per channel). Labels with a "
            "T axis are measured per time point (a t column). See docs/sharing.md#measurements."
        ),
        epilog=(
            "examples:\n"
            "  unetseg measure cells_labels.tif cells.tif -o cells.csv\n"
            "  unetseg measure stack_labels.tif stack.tif -o stack.csv --pixel-size 2,0.5,0.5 --unit um"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("labels", metavar="LABELS", type=Path, help="label image (TIFF or zarr)")
    parser.add_argument(
        "image", metavar="IMAGE", type=Path, nargs="?",
        help="image of the same shape (plus a channel axis) for intensities (TIFF or zarr)",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="CSV file to write")
    parser.add_argument(
        "--axes", help="axes of LABELS: YX, ZYX, TYX or TZYX (default: as stored in the file, else YX, ZYX, TZYX)"
    )
    add_scale_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing unless something fails")
    parser.set_defaults(run=run_measure)


def run_measure(args: argparse.Namespace) -> int:
    """Check every input and the output, then measure and write the CSV."""
    from .io import probe_image, read_image

    inputs = [args.labels, *([args.image] if args.image is not None else [])]
    infos = [probe_image(path) for path in inputs]
    plan_csv_outputs([args.output], inputs, args.overwrite)
    axes = args.axes or (infos[0].axes if infos[0].axes and "C" not in infos[0].axes else None)
    image = None
    if args.image is not None:
        channel = channel_axis(infos[0].shape, infos[1].shape, infos[1].axes)
        if channel is None and infos[1].shape != infos[0].shape:
            raise CliError(f"{args.labels} has shape {infos[0].shape} but {args.image} has {infos[1].shape}")
        image = channel_last(read_image(args.image), channel)
    recorded = [info.pixel_size for info in infos]  # the labels' own, then the image's
    write_table(make_table(read_image(args.labels), image, axes, args, str(args.labels), recorded), args.output, args)
    return 0


def channel_axis(labels_shape: Sequence[int], image_shape: Sequence[int], image_axes: str | None) -> int | None:
    """Which axis of the image holds channels: the recorded ``C`` axis, else the one axis whose removal
    leaves the labels' shape; None when the image has the labels' shape (or no axis fits)."""
    labels_shape, image_shape = tuple(labels_shape), tuple(image_shape)
    if image_axes and "C" in image_axes and len(image_axes) == len(image_shape):
        found = image_axes.index("C")
        return found if image_shape[:found] + image_shape[found + 1 :] == labels_shape else None
    if len(image_shape) != len(labels_shape) + 1:
        return None
    fits = [k for k in range(len(image_shape)) if image_shape[:k] + image_shape[k + 1 :] == labels_shape]
    if len(fits) > 1:
        raise CliError(f"cannot tell which axis of the image (shape {image_shape}) holds its channels; "
                       "save it with axis names (e.g. an ImageJ or OME TIFF)")
    return fits[0] if fits else None


def plan_csv_outputs(outputs: Sequence[Path], inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse CSV outputs that are not ``.csv`` names, clash, exist (without ``overwrite``) or are inputs."""
    refuse_outputs_over_inputs(outputs, inputs)
    seen: set[Path] = set()
    for path in outputs:
        if path.suffix.lower() != CSV_SUFFIX:
            raise CliError(f"{path}: measurements are written as CSV; end the file name in {CSV_SUFFIX}")
        if path.resolve() in seen:
            raise CliError(f"two tables would be written to {path}")
        seen.add(path.resolve())
        if path.is_dir():
            raise CliError(f"output {path} is a folder")
        refuse_existing(path, overwrite)
        check_writable_folder(path.parent)


def segment_csv_paths(inputs: Sequence[Path], measurements: Path) -> list[Path]:
    """The CSV of each input of ``segment --measurements``: the file itself for one input, else
    ``<name>_measurements.csv`` in the folder ``measurements`` (like ``<name>_labels.tif``)."""
    if measurements.suffix.lower() == CSV_SUFFIX and not measurements.is_dir():
        if len(inputs) > 1:
            raise CliError(f"{len(inputs)} inputs need a folder for --measurements, not the file name {measurements}")
        return [measurements]
    if measurements.exists() and not measurements.is_dir():
        raise CliError(f"--measurements {measurements} is a file; give a .csv name or a folder")
    return [measurements / f"{file_stem(src)}_measurements{CSV_SUFFIX}" for src in inputs]


def channel_last(image: Any, channel: int | None) -> Any:
    """The image with its channel axis (if any) last, as :func:`~.measurements.measure_objects` wants it
    (read into memory to move it)."""
    import numpy as np

    if channel is None or channel == len(image.shape) - 1:
        return image
    return np.moveaxis(np.asarray(image), channel, -1)


def plan_segment_measurements(
    args: argparse.Namespace, jobs: Sequence[tuple[Path, Path]], axes: Sequence[str], extra_inputs: Sequence[Path]
) -> list[Path | None]:
    """The CSV of each (input, labels output) job of ``segment --measurements``, checked before any work
    with the labels' ``axes`` of each job (None each without the option)."""
    if args.measurements is None:
        if args.pixel_size is not None:
            raise CliError("--pixel-size is for the measurements: add --measurements CSV|FOLDER")
        return [None] * len(jobs)
    for (src, _), job_axes in zip(jobs, axes):
        try:
            _scale(args.pixel_size, job_axes)
        except ValueError as exc:
            raise CliError(f"{src}: {exc}") from None
    paths = segment_csv_paths([src for src, _ in jobs], args.measurements)
    plan_csv_outputs(paths, [*(path for job in jobs for path in job), *extra_inputs], args.overwrite)
    return list(paths)


def make_table(
    labels: Any, image: Any, axes: str | None, args: argparse.Namespace, what: str,
    recorded: Sequence[PixelSize | None] = (),
) -> dict[str, Any]:
    """The measurement table of ``labels`` (``image`` for intensities). Units: ``--pixel-size``, else
    the first of the files' ``recorded`` pixel sizes that covers every spatial axis (in um)."""
    from .measurements import measure_objects, resolve_axes

    try:
        axes = resolve_axes(labels, axes)
        sizes, unit = args.pixel_size, args.unit
        if sizes is None:
            found = [size.along(axes.replace("T", "")) for size in recorded if size is not None]
            sizes, unit = next(((s, "um") for s in found if s is not None), (None, unit))
        return measure_objects(labels, image, axes=axes, scale=_scale(sizes, axes), unit=unit)
    except ValueError as exc:
        raise CliError(f"{what}: {' '.join(str(exc).split())}") from None


def write_table(table: dict[str, Any], output: Path, args: argparse.Namespace) -> None:
    """Write the table atomically to ``output`` (creating its folder) and say so unless ``--quiet``."""
    from .measurements import write_csv

    output.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, output, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {output} ({len(table['label'])} objects)", file=sys.stderr)


def _scale(sizes: tuple[float, ...] | None, axes: str) -> tuple[float, ...] | None:
    """A scale per axis of ``axes`` (T gets 1) from ``--pixel-size`` (one size per spatial axis, or one for all)."""
    if sizes is None:
        return None
    spatial = axes.replace("T", "")
    if len(sizes) == 1:
        sizes = sizes * len(spatial)
    if len(sizes) != len(spatial):
        raise ValueError(f"--pixel-size gives {len(sizes)} sizes for the {len(spatial)} spatial axes {spatial}")
    return (1.0,) * ("T" in axes) + tuple(sizes)
