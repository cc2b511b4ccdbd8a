"""Tuning data for the Triton convolution (kernels/conv2d.py): data only, no kernel code.

A tile is one program's share of the implicit GEMM
``out[M, Cout] = A[M, KH*KW*Cin] @ B[KH*KW*Cin, Cout]`` (M = N*OH*OW output pixels):
``block_m`` pixels x ``block_n`` output channels, reducing ``block_k`` rows per step (one
tap's block of input channels, or, for layers with few input channels, several taps' channels
packed together). ``num_warps`` and ``num_stages`` (the software pipeline depth over those
steps) go to Triton unchanged.

The launcher (``conv2d.fit_tile``) shrinks ``block_n`` to the layer's output channels and
``block_k`` to what its window needs (never below 16, ``tl.dot``'s minimum), so a 64-channel
tile also serves the 1- and 3-channel end layers.
"""

from __future__ import annotations

from typing import NamedTuple


class Tile(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Autotuned on a GPU (keyed on Cin, Cout, window, epilogue, dtype and the pixel count's power
# of two). One block_n spans all of Cout, so each activation is read once per tap. Measured on
# an H100 with the 3x3 kernel (fp16, 64 -> 64, 512x512 and 1024x1024): 128-pixel tiles with
# 64-channel steps and 3 stages won; 256-pixel tiles (one CTA per SM) and persistent or
# 2-D-tiled variants were no faster. The 128-wide tiles are for the released models' 128
# features. Other windows (1x1 .. 9x9) tune over the same list; nothing measured them yet.
# Configs that cannot fit the device's shared memory (fp32 with deep pipelines) are dropped
# before tuning.
GPU_TILES: tuple[Tile, ...] = (
    Tile(128, 64, 64, 8, 3),
    Tile(128, 64, 64, 4, 3),
    Tile(128, 64, 32, 4, 4),
    Tile(64, 64, 64, 4, 4),
    Tile(128, 128, 64, 8, 3),
    Tile(64, 128, 64, 4, 3),
)

# Under TRITON_INTERPRET=1 nothing is tuned: one big tile, because the interpreter's cost is
# per program and per loop step (numpy calls), not per element.
INTERPRETER_TILE = Tile(256, 64, 64, 4, 1)

# Fraction of the device's opt-in shared memory a config's operand pipeline may fill
# (the rest is left to Triton's own scratch, e.g. layout conversions in the epilogue).
SHARED_MEMORY_FRACTION = 0.9


# --- the weight gradient (kernels/conv2d_wgrad.py) ----------------------------------------------
#
# Its GEMM is ``dW[Cout, KH*KW*Cin] = G^T[Cout, P] @ X[P, KH*KW*Cin]`` over the P = N*OH*OW
# output pixels, so a Tile's ``block_m`` spans output channels, ``block_n`` columns
# (tap, input channel) and ``block_k`` pixels. The launcher (``conv2d_wgrad.fit_tile``) shrinks
# ``block_m`` to Cout and ``block_n`` to the window's taps x Cin (several taps per block when Cin
# is small), never below 16. Not yet measured on a GPU: long pixel steps because K is the long
# axis, 64x64 channel tiles for the released models' 64 features.
WGRAD_GPU_TILES: tuple[Tile, ...] = (
    Tile(64, 64, 64, 4, 3),
    Tile(64, 64, 128, 4, 3),
    Tile(64, 64, 128, 8, 4),
    Tile(128, 64, 64, 8, 3),
    Tile(64, 128, 64, 4, 3),
    Tile(128, 128, 32, 8, 3),
)

# One interpreted tile (its cost is per program and loop step, so few big steps).
WGRAD_INTERPRETER_TILE = Tile(64, 64, 128, 4, 1)

# The pixels are split into chunks, each program summing one chunk into its own fp32 partial
# (added in a fixed order afterwards: no atomics, bitwise reproducible). A chunk is a multiple
# of WGRAD_CHUNK_ALIGN pixels (a multiple of every tile's block_k) and at least
# WGRAD_MIN_CHUNK_PIXELS long; on a GPU the chunk count aims at WGRAD_PROGRAMS_PER_SM programs
# per SM. The interpreter splits at every WGRAD_CHUNK_ALIGN pixels, so small tests have chunks.
WGRAD_CHUNK_ALIGN = 128
WGRAD_MIN_CHUNK_PIXELS = 2048
WGRAD_PROGRAMS_PER_SM = 2
WGRAD_MAX_CHUNKS = 256


# --- two 3x3 layers in one kernel (kernels/conv2d_pair.py) ---------------------------------------
#
# A program computes the first layer on a ``grid_h x grid_w`` grid of pixels (both powers of
# two), kept on chip, and the second layer on the grid's interior, ``(grid_h - 2) x (grid_w - 2)``
# output pixels: the ring is the second layer's 1-pixel halo, recomputed by each neighbouring
# program. The first layer reduces ``block_k`` rows per step as ``Tile`` does (fitted the same
# way, ``conv2d.fit_tile``); the second reduces over all mid channels per tap. Not yet measured
# on a GPU: grids of 128-512 pixels (the interior does 47%-82% of the grid's work), the
# mid tile's ``grid x channels`` fp32 values at most PAIR_MAX_TILE_ELEMENTS per program.
class PairTile(NamedTuple):
    grid_h: int
    grid_w: int
    block_k: int
    num_warps: int
    num_stages: int


PAIR_GPU_TILES: tuple[PairTile, ...] = (
    PairTile(16, 16, 64, 8, 2),
    PairTile(16, 16, 64, 4, 2),
    PairTile(8, 32, 64, 8, 2),
    PairTile(16, 32, 64, 8, 2),
    PairTile(8, 16, 64, 4, 2),
)

# Under the interpreter: one grid shape, small enough that the tests' images span several.
PAIR_INTERPRETER_TILE = PairTile(8, 16, 64, 4, 1)

# Layers wider than this are not paired (their mid tile would not stay on chip), and grids
# whose mid tile exceeds PAIR_MAX_TILE_ELEMENTS values are dropped before tuning.
PAIR_MAX_CHANNELS = 128
PAIR_MAX_TILE_ELEMENTS = 256 * 128
