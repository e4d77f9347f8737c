"""The U-Net of Ronneberger, Fischer & Brox (2015), built from small named blocks.

Only ``torch.nn.Module`` code lives here: no I/O, no devices, no GUI.

Shapes in the docstrings use ``N`` for the batch, ``C`` for channels and ``H, W`` for the plane.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PADDING_MODES = ("same", "valid")
UPSAMPLING_MODES = ("transpose", "bilinear")
NORM_LAYERS = ("batch", "instance", "group", "none")


def _norm_layer(kind: str | None, channels: int) -> nn.Module:
    """A normalisation layer for ``channels`` feature maps, or identity for ``"none"``."""
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be one of {NORM_LAYERS}, got {kind!r}")


class DoubleConv(nn.Sequential):
    """(3x3 convolution => [norm] => ReLU) * 2, optionally followed by dropout.

    ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` with ``H' = H`` for ``"same"``
    padding and ``H' = H - 4`` for ``"valid"`` padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        padding: str = "same",
        norm: str | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        pad = 1 if padding == "same" else 0
        use_bias = norm in (None, "none")
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(channels_in, out_channels, 3, padding=pad, bias=use_bias),
                _norm_layer(norm, out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pooling => DoubleConv: one step down the contracting path.

    In ``"same"`` mode the pooling rounds odd sizes up, so even a 1-pixel map stays 1 pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, padding: str, **block: Any) -> None:
        super().__init__(
            nn.MaxPool2d(2, ceil_mode=padding == "same"),
            DoubleConv(in_channels, out_channels, padding, **block),
        )


def center_crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of an ``(N, C, H, W)`` tensor."""
    top = (tensor.shape[-2] - height) // 2
    left = (tensor.shape[-1] - width) // 2
    return tensor[..., top : top + height, left : left + width]


class Up(nn.Module):
    """Upsample x2 (halving channels) => fit to the skip features => concatenate => DoubleConv.

    ``"same"`` padding: the upsampled map is cropped to the skip's size before concatenation
    (after ceil-mode pooling it is never smaller), so any input size works.
    ``"valid"`` padding: the skip features are centre-cropped to the upsampled size, as in the paper.
    """

    def __init__(
        self, in_channels: int, out_channels: int, padding: str, upsampling: str, **block: Any
    ) -> None:
        super().__init__()
        half = in_channels // 2
        if upsampling == "transpose":
            self.upsample: nn.Module = nn.ConvTranspose2d(in_channels, half, 2, stride=2)
        elif upsampling == "bilinear":
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, 1),
            )
        else:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
        self.padding = padding
        self.conv = DoubleConv(half + out_channels, out_channels, padding, **block)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``below``: (N, in_channels, h, w); ``skip``: (N, out_channels, H, W) from the encoder."""
        up = self.upsample(below)
        if self.padding == "same":
            up = center_crop(up, skip.shape[-2], skip.shape[-1])
        else:
            skip = center_crop(skip, up.shape[-2], up.shape[-1])
        return self.conv(torch.cat([skip, up], dim=1))


_NONE, _ENCODER, _ALL = 0, 1, 2  # whose batch-norm statistics stay fixed while training


class UNet(nn.Module):
    """U-Net returning raw per-class logits ``(N, num_classes, H_out, W_out)``.

    ``padding="same"`` keeps the input's height and width for any size.
    ``padding="valid"`` is the paper's network: unpadded convolutions, so the output is smaller
    than the input (572 -> 388 for depth 4); see :meth:`output_size`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        padding: str = "same",
        upsampling: str = "transpose",
        norm: str | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._frozen_statistics = _NONE
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_channels": base_channels,
            "depth": depth,
            "padding": padding,
            "upsampling": upsampling,
            "norm": norm or "none",
            "dropout": dropout,
        }
        widths = [base_channels * 2**level for level in range(depth + 1)]
        block = {"norm": norm}
        self.inc = DoubleConv(in_channels, widths[0], padding, **block)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], padding, **block, dropout=dropout if i == depth - 1 else 0.0)
            for i in range(depth)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], padding, upsampling, **block) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def depth(self) -> int:
        return self.config["depth"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, num_classes, H_out, W_out)`` logits."""
        if self.config["padding"] == "valid":
            self._check_valid_size(x.shape[-2:])
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

    def output_size(self, size: int) -> int | None:
        """Output length for an input length, or ``None`` if ``size`` is not valid for this network."""
        if self.config["padding"] == "same":
            return size
        return valid_output_size(size, self.depth)

    def context_margin(self) -> int:
        """Pixels of context on each side that an output pixel depends on (the receptive radius)."""
        return receptive_radius(self.depth)

    def reset_head(self, num_classes: int) -> None:
        """Replace the final 1x1 convolution, keeping the trained body (for a new class count)."""
        self.head = nn.Conv2d(self.head.in_channels, num_classes, 1).to(self.head.weight.device)
        self.config["num_classes"] = num_classes

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the contracting path (first block and the down steps)."""
        return [*self.inc.parameters(), *self.downs.parameters()]

    def freeze_encoder(self) -> None:
        """Stop training the contracting path: no gradients, and its batch-norm layers keep their
        running statistics in training mode (see :meth:`train`)."""
        for parameter in self.encoder_parameters():
            parameter.requires_grad_(False)
        self._frozen_statistics = max(self._frozen_statistics, _ENCODER)
        self.train(self.training)

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder` and :meth:`keep_norm_statistics`."""
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        self._frozen_statistics = _NONE
        self.train(self.training)

    def keep_norm_statistics(self) -> None:
        """Every batch-norm layer keeps its running statistics in training mode; scales and shifts
        still train. Fine-tuning samples its batches from a few painted patches: normalising with
        their statistics would overwrite what the layers learned from the whole training set."""
        self._frozen_statistics = _ALL
        self.train(self.training)

    def train(self, mode: bool = True) -> "UNet":
        """``nn.Module.train``, leaving the batch-norm layers chosen by :meth:`freeze_encoder` or
        :meth:`keep_norm_statistics` in evaluation mode."""
        super().train(mode)
        frozen = getattr(self, "_frozen_statistics", _NONE)
        if mode and frozen:
            for module in (self,) if frozen == _ALL else (self.inc, self.downs):
                for layer in module.modules():
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                        layer.eval()
        return self

    def _check_valid_size(self, shape: torch.Size) -> None:
        for size in shape:
            if valid_output_size(int(size), self.depth) is None:
                hint = nearest_valid_size(int(size), self.depth)
                raise ValueError(
                    f"padding='valid' with depth {self.depth} needs input sizes in "
                    f"{valid_size_rule(self.depth)}; got {tuple(shape)}. Use {hint} (or padding='same')."
                )


def valid_output_size(size: int, depth: int) -> int | None:
    """Output length of an unpadded U-Net for input length ``size``, or ``None`` if invalid.

    Every pooling must see an even length and every convolution a positive one.
    """
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(depth):
        size = size * 2 - 4
        if size <= 0:
            return None
    return size


def receptive_radius(depth: int) -> int:
    """Context an unpadded U-Net of this depth consumes per side (92 px for depth 4)."""
    smallest = nearest_valid_size(1, depth)
    return (smallest - valid_output_size(smallest, depth)) // 2


def valid_size_rule(depth: int) -> str:
    """Human-readable set of valid input sizes, e.g. ``16k + 12 (>= 188)`` for depth 4."""
    step = 2**depth
    smallest = nearest_valid_size(1, depth)
    return f"{step}k + {smallest % step} (>= {smallest})"


def nearest_valid_size(size: int, depth: int) -> int:
    """The smallest valid input length >= ``size`` for an unpadded U-Net of this depth."""
    while valid_output_size(size, depth) is None:
        size += 1
    return size
