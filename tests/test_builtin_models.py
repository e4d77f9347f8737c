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
    assert main(["models"]) == 0
    assert "nuclei  (instance" in capsys.readouterr().out
    assert len(list_models()) == 2


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
        pytest.skip("team data not present")
    image = tifffile.imread(path)[22]
    truth = tifffile.imread(SHARED_DATA / "isbi2012" / "train-labels.tif")[22]
    labels = segment(image, "em-membranes", device="cpu")
    assert set(np.unique(labels)) == {1, 2}
    assert evaluate(labels, truth, "semantic", foreground=(2, 255))["pixel_error"] < 0.12
