"""The shipped models: listed, small, and they segment what they were made for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unetseg.cli import main
from napari_unetseg.inference import segment
from napari_unetseg.metrics import evaluate, object_matching
from napari_unetseg.models import builtin_names, builtin_path, list_models, resolve_model
from napari_unetseg.synthetic import sample_image_2d

from conftest import SHARED_DATA


def test_both_models_ship_and_are_small():
    assert builtin_names() == ["em-membranes", "nuclei"]
    for name in builtin_names():
        assert builtin_path(name).stat().st_size <= 10_000_000


def test_models_command_lists_modes_classes_and_metrics(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["nuclei"]["mode"] == "instance"
    assert rows["em-membranes"]["mode"] == "semantic"
    assert rows["em-membranes"]["classes"] == ["membrane", "cell"]
    assert "pixel_error" in rows["em-membranes"]["metrics"]
    assert rows["nuclei"]["metrics"] and rows["nuclei"]["training_data"]
    assert [name for name, row in rows.items() if row["default"]] == ["nuclei"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "nuclei [default]  (instance" in table and "em-membranes  (semantic" in table
    assert len(list_models()) == 2


def test_every_model_in_the_help_examples_exists(capsys):
    """The examples name built-in models by name; a file in an example is not a built-in name plus .pt."""
    from napari_unetseg.cli import build_parser

    assert main(["segment", "--help"]) == 0
    examples = [line.split("#")[0].split() for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith("unetseg segment")]
    assert len(examples) >= 5
    named = []
    for words in examples:
        args = build_parser().parse_args(words[1:])
        named.append(args.model)
        assert args.model in builtin_names() or (args.model.endswith(".pt") and args.model[:-3] not in builtin_names())
    assert "nuclei" in named and "em-membranes" in named


def test_a_builtin_name_with_a_suffix_says_the_right_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("cells.tif", sample_image_2d()[0])
    assert main(["segment", "cells.tif", "-o", "out.tif", "--model", "nuclei.pt"]) == 2
    assert "the built-in model is named 'nuclei'" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_resolving_a_builtin_gives_an_independent_copy():
    first, second = resolve_model("nuclei"), resolve_model("nuclei")
    assert first.model is not second.model
    next(first.model.parameters()).data.zero_()
    assert next(second.model.parameters()).abs().sum() > 0


def test_nuclei_model_segments_the_sample_image():
    image, truth = sample_image_2d()
    labels = segment(image, "nuclei", device="cpu")
    assert object_matching(labels, truth)["f1"] > 0.8


def test_em_model_separates_membranes_on_an_isbi_slice():
    """A sanity check on a slice the model saw in training; test slices 25-29 are for the recipe's report."""
    path = SHARED_DATA / "isbi2012" / "train-volume.tif"
    if not path.exists():
        pytest.skip(f"team data not present in {SHARED_DATA} (set UNETSEG_TEAM_DATA)")
    image = tifffile.imread(path)[22]
    truth = tifffile.imread(SHARED_DATA / "isbi2012" / "train-labels.tif")[22]
    labels = segment(image, "em-membranes", device="cpu")
    assert set(np.unique(labels)) == {1, 2}
    assert evaluate(labels, truth, "semantic", foreground=(2, 255))["pixel_error"] < 0.12
