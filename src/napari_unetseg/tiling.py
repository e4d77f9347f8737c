"""The overlap-tile strategy: cut a plane into network-sized tiles that together give seamless output.

Each tile is fed with enough context around the part of its output that is kept, so a tiled
plane matches the untiled result. ``"same"``-padded networks see the plane as it is (mirrored
only up to a multiple of ``2**depth``), exactly as they were trained and as a plain
whole-plane forward pass sees it; tiles at the image border reach the border, and tile
positions stay on the pooling grid, so tiled and untiled outputs agree up to float rounding.
``"valid"`` networks consume their context themselves and get a mirrored margin of the
receptive radius, the paper's overlap-tile strategy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .model import UNet, nearest_valid_size, valid_output_size


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis: network input window, part of its output kept, and where it goes."""

    source: slice
    keep: slice
    target: slice


@dataclass(frozen=True)
class AxisPlan:
    pad_before: int
    pad_after: int
    output_length: int
    crop: slice
    tiles: list[AxisTile]


@dataclass(frozen=True)
class Tile:
    source: tuple[slice, slice]
    keep: tuple[slice, slice]
    target: tuple[slice, slice]


@dataclass(frozen=True)
class TilePlan:
    """How a ``shape`` plane is padded, tiled and cropped back."""

    shape: tuple[int, int]
    rows: AxisPlan
    cols: AxisPlan

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the assembled network output before cropping."""
        return self.rows.output_length, self.cols.output_length

    @property
    def tiles(self) -> list[Tile]:
        return [
            Tile((r.source, c.source), (r.keep, c.keep), (r.target, c.target))
            for r, c in itertools.product(self.rows.tiles, self.cols.tiles)
        ]

    def pad(self, plane: np.ndarray) -> np.ndarray:
        """Mirror-pad a ``(C, H, W)`` plane for the tiles."""
        widths = ((0, 0), (self.rows.pad_before, self.rows.pad_after), (self.cols.pad_before, self.cols.pad_after))
        if not any(before or after for before, after in widths):
            return plane  # nothing to add: no copy (a huge plane would double in memory)
        return np.pad(plane, widths, mode="symmetric")

    def crop(self, output: np.ndarray) -> np.ndarray:
        """Cut the assembled ``(K, H', W')`` output back to the plane's ``(K, H, W)``."""
        return output[:, self.rows.crop, self.cols.crop]


def plan_tiles(model: UNet, height: int, width: int, tile_size: int) -> TilePlan:
    """Plan the tiling of a ``height x width`` plane for ``model`` with tiles of at most ``tile_size``."""
    if model.config["padding"] == "valid":
        plan_axis = _plan_valid_axis
    else:
        plan_axis = _plan_same_axis
    return TilePlan((height, width), plan_axis(model, height, tile_size), plan_axis(model, width, tile_size))


def _plan_same_axis(model: UNet, length: int, tile_size: int) -> AxisPlan:
    step = 2**model.depth
    tile = max(step, tile_size // step * step)
    padded = math.ceil(length / step) * step
    crop = slice(0, length)
    if padded <= tile:
        whole = slice(0, padded)
        return AxisPlan(0, padded - length, padded, crop, [AxisTile(whole, whole, whole)])
    margin = min(math.ceil(model.context_margin() / step) * step, (tile - step) // 2 // step * step)
    starts = [*range(0, padded - tile, tile - 2 * margin), padded - tile]  # last one flush with the end
    tiles = []
    for i, start in enumerate(starts):
        low = 0 if i == 0 else start + margin
        high = padded if i == len(starts) - 1 else start + tile - margin
        tiles.append(AxisTile(slice(start, start + tile), slice(low - start, high - start), slice(low, high)))
    return AxisPlan(0, padded - length, padded, crop, tiles)


def _plan_valid_axis(model: UNet, length: int, tile_size: int) -> AxisPlan:
    radius = model.context_margin()
    crop = slice(0, length)
    whole_input = nearest_valid_size(length + 2 * radius, model.depth)
    tile_input = _largest_valid_size(tile_size, model.depth)
    if whole_input <= tile_input:
        out = valid_output_size(whole_input, model.depth)
        tiles = [AxisTile(slice(0, whole_input), slice(0, out), slice(0, out))]
        return AxisPlan(radius, whole_input - length - radius, out, crop, tiles)
    tile_output = valid_output_size(tile_input, model.depth)
    step = 2**model.depth
    # strides on the pooling grid keep tiles consistent with each other; tiles overlap a little
    stride = tile_output // step * step or tile_output
    count = math.ceil((length - tile_output) / stride) + 1
    tiles = []
    for i in range(count):
        keep = tile_output if i == count - 1 else stride
        start = i * stride
        tiles.append(AxisTile(slice(start, start + tile_input), slice(0, keep), slice(start, start + keep)))
    padded = (count - 1) * stride + tile_input
    return AxisPlan(radius, padded - length - radius, (count - 1) * stride + tile_output, crop, tiles)


def _largest_valid_size(limit: int, depth: int) -> int:
    """The largest valid input length <= ``limit`` (or the smallest valid one if none fits)."""
    smallest = nearest_valid_size(1, depth)
    step = 2**depth
    if limit <= smallest:
        return smallest
    return smallest + (limit - smallest) // step * step
