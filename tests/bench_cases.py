"""What the benchmark's test files share: the smallest run that still exercises everything."""
from duat import bench

# 8x8 images, tiny width, L = 1 and 2.
TINY = dict(size="tiny", image_size=8, in_channels=1, layers=(1, 2), batches=(1, 3),
            reps=3, min_reps=3, warmup=1, rounds=2, peak_sizes=(64, 128), device="cpu")
TINY_ARGS = ["--device", "cpu", "--size", "tiny", "--image-size", "8", "--in-channels", "1",
             "--layers", "1", "2", "--batch", "2", "--reps", "3", "--warmup", "1"]


def expected_impls() -> list[str]:
    return [i for i in bench.IMPLEMENTATIONS
            if i != "timm-parallel" or bench.timm_available() is None]
