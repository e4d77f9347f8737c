"""``unetseg export``: a built-in model or checkpoint as a bioimage.io model package (zip).

Kept apart from :mod:`.cli`, which only registers it (:func:`add_export`); the work is done by
:func:`~.bioimageio.export_package`. Bad input (an unknown model, an existing output without
``--overwrite``, a name not ending in ``.zip``) ends as one ``unetseg: error:`` line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_export(commands: argparse._SubParsersAction) -> None:
    """The ``export`` sub-command."""
    parser = commands.add_parser(
        "export",
        help="write a model as a bioimage.io package (zip) for ilastik, deepImageJ, QuPath and other tools",
        description=(
            "Write MODEL as a bioimage.io model package (spec 0.5): weights as the state dict, torchscript and ONNX "
            "(class probabilities), scale_range preprocessing, test tensors, a cover image and a README. "
            "`unetseg segment --model FILE.zip` gives the labels of MODEL itself. See docs/sharing.md#bioimageio."
        ),
        epilog=(
            "examples:\n"
            "  unetseg export nuclei -o nuclei.zip\n"
            "  unetseg export cells-ft1.pt -o cells-ft1.zip --overwrite\n"
            "  bioimageio test nuclei.zip   # bioimage.io's reference test (pip install bioimageio.core)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="built-in model name or checkpoint file (.pt)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="package file to write (.zip)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing unless something fails")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Check the output name, then export (the model is loaded and checked first)."""
    output: Path = args.output
    if output.suffix.lower() != ".zip":
        raise ValueError(f"{output}: a bioimage.io package is a zip file; end the name in .zip")
    if output.is_dir():
        raise ValueError(f"output {output} is a folder; give a file name ending in .zip")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; use --overwrite to replace it")
    if output.exists() and Path(args.model).exists() and output.resolve() == Path(args.model).resolve():
        raise ValueError(f"{output} is the model being exported; choose another output name")
    from .bioimageio import export_package

    export_package(args.model, output, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {output} (bioimage.io model package); check it with: bioimageio test {output}", file=sys.stderr)
    return 0
