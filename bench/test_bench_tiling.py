"""Tiled against whole-image inference: the default model (RED30, fused, backend auto) on an
image that fits in memory, side by side in one group per size; megapixels/s (of the image,
not of the tiles with their halos) in extra_info.

    pytest bench/test_bench_tiling.py --benchmark-only               # 256x256
    pytest bench/test_bench_tiling.py --benchmark-only --runslow     # and 1024 and 2048

What tiling costs is the halo: each tile recomputes ``radius`` (30) pixels of context on every
interior side, so small tiles do more work per output pixel (``work`` in extra_info). The
"2x2 grid" case uses windows of ``size / 2 + radius``: at the true border a window needs no
halo, so on 2048x2048 it computes 1.06x the pixels of the whole image, in four equal windows
that go to the model as one batch while the next image region is read and the last written.
"""

import functools

import pytest
import torch

import redkern
from redkern import benchmarking as B
from redkern.backends import default_for
from redkern.tiling import plan_tiles, resolve_halo, tiled

FEATURES = 32  # modest, so the default run stays short on a CPU
SIZES = [256, pytest.param(1024, marks=pytest.mark.slow), pytest.param(2048, marks=pytest.mark.slow)]
# (name, tile, batch); None runs the whole image in one model call, "2x2" a 2x2 grid.
CASES = [("whole image", None, 1), ("tiled, one tile", 4096, 1), ("tiled 128", 128, 1),
         ("tiled 128, batch 4", 128, 4), ("tiled 512", 512, 1), ("tiled 2x2 grid", "2x2", 1),
         ("tiled 2x2 grid, batch 4", "2x2", 4)]


@functools.lru_cache(maxsize=None)
def model():
    torch.manual_seed(0)
    return B.kaiming_init_(redkern.RED30(features=FEATURES, fused=True)).eval()


@pytest.mark.parametrize("name,tile,batch", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("size", SIZES)
def test_tiling(benchmark, record, size, name, tile, batch):
    benchmark.group = f"tiling: RED30 fused ({FEATURES} features) 1x1x{size}x{size}"
    net = model()
    if size > 1024 and tile not in (None, "2x2"):
        pytest.skip("at 2048 only the whole image and the 2x2 grid are compared (each run is long)")
    if tile == "2x2":
        tile = size // 2 + resolve_halo(net, None)
    x = torch.rand(1, 1, size, size)
    if tile is None:
        def run():
            with torch.no_grad():
                return net(x)
        work, error = 1.0, None  # the baseline: the others are checked against it
    else:
        def run():
            return tiled(net, x, tile=tile, batch=batch, quiet=True)
        tiles = plan_tiles(size, size, tile, resolve_halo(net, None))
        work = sum((t.window[0].stop - t.window[0].start) * (t.window[1].stop - t.window[1].start)
                   for t in tiles) / size**2
        with torch.no_grad():
            want = net(x)
        error = B.max_rel_error(run(), want)  # Kaiming RED30 outputs reach ~30: relative to the largest
        assert error <= 1e-5, f"{name}: tiled differs from whole-image inference by {error} (relative)"
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record(pixels=size * size, error=error, backend=default_for(x.device), dtype="float32", tile=tile,
           batch=batch, work=round(work, 3), provider=f"redkern {name}", baseline=tile is None)
