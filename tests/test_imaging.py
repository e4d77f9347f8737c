"""Telling fluorescence from EM images, so the viewer does not preselect a model for the other kind."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unetseg.imaging import ELECTRON_MICROSCOPY, FLUORESCENCE, image_imaging, model_imaging
from napari_unetseg.synthetic import sample_image_2d, sample_stack_3d

from conftest import SHARED_DATA


def test_models_and_their_versions_have_the_kind_of_their_built_in():
    assert model_imaging("nuclei") == model_imaging("nuclei-ft3") == FLUORESCENCE
    assert model_imaging("em-membranes") == model_imaging("em-membranes-ft1") == ELECTRON_MICROSCOPY
    assert model_imaging("my-own-model") is None


def test_the_samples_look_like_fluorescence_and_a_grey_section_like_em():
    assert image_imaging(sample_image_2d()[0]) == FLUORESCENCE
    assert image_imaging(sample_stack_3d()[0][12]) == FLUORESCENCE
    rng = np.random.default_rng(0)
    section = rng.normal(150, 20, (600, 700))  # grey cells...
    section[::40] = 30  # ...cut by dark membranes
    section[:, ::45] = 30
    assert image_imaging(section.astype(np.uint8)) == ELECTRON_MICROSCOPY


def test_flat_or_unclear_planes_are_left_open():
    assert image_imaging(np.full((64, 64), 7, np.uint16)) is None
    assert image_imaging(np.linspace(0, 1, 64 * 64).reshape(64, 64) ** 1.5) is None  # median at 0.35: in doubt
    assert image_imaging(np.zeros((3, 4, 4))) is None


def test_real_data_when_present():
    em, nuclei = SHARED_DATA / "isbi2012" / "train-volume.tif", SHARED_DATA / "cells3d-nuclei" / "nuclei.tif"
    if not (em.exists() and nuclei.exists()):
        pytest.skip(f"team data not present in {SHARED_DATA} (set UNETSEG_TEAM_DATA)")
    assert all(image_imaging(plane) == ELECTRON_MICROSCOPY for plane in tifffile.imread(em)[::5])
    assert all(image_imaging(plane) == FLUORESCENCE for plane in tifffile.imread(nuclei)[20:45:4])
