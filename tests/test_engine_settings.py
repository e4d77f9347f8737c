"""EngineSettings: one default for every front, and bad values refused with the value named."""

import pytest

from napari_unetseg.engine_settings import EngineSettings


def test_the_default_runs_the_fastest_path_that_keeps_the_labels():
    settings = EngineSettings()
    assert (settings.device, settings.precision, settings.backend, settings.postprocess) == ("auto",) * 4
    assert (settings.batch_size, settings.tile_size) == (4, 1024)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"device": "tpu"}, "tpu"), ({"precision": "int4"}, "int4"), ({"backend": "tvm"}, "tvm"),
     ({"postprocess": "gpu"}, "gpu"), ({"batch_size": 0}, "batch_size"), ({"tile_size": 0}, "tile_size")],
)
def test_a_bad_value_is_refused_with_its_name(change, named):
    with pytest.raises(ValueError, match=named):
        EngineSettings().with_changes(**change)


def test_cuda_indices_and_torch_devices_are_kept_as_names():
    torch = pytest.importorskip("torch")
    assert EngineSettings(device=torch.device("cpu")).device == "cpu"
    assert EngineSettings(device="cuda:1").as_record()["device"] == "cuda:1"
