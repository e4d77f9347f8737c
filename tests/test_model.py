"""The U-Net's shapes, sizes and the paper's configuration."""

import pytest
import torch

from napari_unetseg.model import UNet, nearest_valid_size, receptive_radius, valid_output_size, valid_size_rule


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (5, 7), (13, 17), (33, 34), (35, 35), (101, 64)])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_same_padding_keeps_any_size(height, width, upsampling):
    model = UNet(in_channels=2, num_classes=3, base_channels=4, depth=4, upsampling=upsampling).eval()
    out = model(torch.rand(2, 2, height, width))
    assert out.shape == (2, 3, height, width)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norm_variants_run(norm):
    model = UNet(base_channels=8, depth=2, norm=norm, dropout=0.2).eval()
    assert model(torch.rand(1, 1, 20, 20)).shape == (1, 2, 20, 20)


def test_paper_network_valid_padding():
    model = UNet(in_channels=1, num_classes=2, base_channels=64, depth=4, padding="valid", norm="none")
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 31.03
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_valid_sizes_follow_the_paper_rule():
    valid = [s for s in range(150, 260) if valid_output_size(s, 4) is not None]
    assert valid == [188, 204, 220, 236, 252]
    assert all(valid_output_size(s, 4) == s - 184 for s in valid)
    assert valid_size_rule(4) == "16k + 12 (>= 188)"
    assert receptive_radius(4) == 92
    assert nearest_valid_size(500, 4) == 508


def test_valid_padding_rejects_bad_size_with_a_hint():
    model = UNet(base_channels=4, depth=4, padding="valid")
    with pytest.raises(ValueError, match=r"16k \+ 12.*Use 204"):
        model(torch.zeros(1, 1, 200, 204))


def test_reset_head_keeps_the_body():
    model = UNet(base_channels=4, depth=2, num_classes=3)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_head(5)
    assert model.num_classes == 5 and model.config["num_classes"] == 5
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in body.items())
    assert model.eval()(torch.zeros(1, 1, 9, 9)).shape == (1, 5, 9, 9)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="full")
    with pytest.raises(ValueError, match="upsampling"):
        UNet(upsampling="nearest")
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")


def test_freezing_keeps_the_chosen_norm_layers_in_eval_mode_while_training() -> None:
    model = UNet(base_channels=4, depth=2)
    norms = lambda module: [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # noqa: E731
    encoder = norms(model.inc) + norms(model.downs)
    decoder = [m for m in norms(model) if all(m is not e for e in encoder)]
    assert encoder and decoder
    model.freeze_encoder()
    model.train()
    assert not any(m.training for m in encoder) and all(m.training for m in decoder)
    assert not any(p.requires_grad for p in model.encoder_parameters())
    model.keep_norm_statistics()
    assert not any(m.training for m in norms(model)) and model.training
    model.unfreeze_encoder()
    assert all(m.training for m in norms(model)) and all(p.requires_grad for p in model.parameters())
