"""Runtime helpers every other module needs: device choice, seeding, the PROFILE switch,
the thread count (`threads`), and the one description of the environment that `duat info`,
every result record and every benchmark carry (`environment_info`).

torch is imported inside the functions, so `import duat.runtime` stays cheap.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import random
import sys
from typing import Any, Iterator

from duat.checks import whole

PROFILES = ("quick", "full")
PROFILE_ENV = "DUAT_PROFILE"
DEVICE_ENV = "DUAT_DEVICE"


# ----------------------------------------------------------------------------- profile

def profile(value: str | None = None) -> str:
    """The run profile: 'quick' (small sizes, the default, used by tests) or 'full'.

    Reads `value`, else the DUAT_PROFILE environment variable, else 'quick'.
    """
    chosen = value if value is not None else os.environ.get(PROFILE_ENV, "quick")
    chosen = chosen.strip().lower()
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}: expected one of {', '.join(PROFILES)} "
                         f"(set by argument or the {PROFILE_ENV} environment variable)")
    return chosen


# ----------------------------------------------------------------------------- devices

def available_devices() -> list[str]:
    """Device kinds torch can use here, best first, always ending with 'cpu'."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(preferred: str | None = None):
    """Pick a torch.device: cuda > mps > cpu, or the one asked for.

    `preferred` may be None or 'auto' (best available; the DUAT_DEVICE environment variable
    overrides), or an explicit 'cpu', 'cuda', 'cuda:1', 'mps'. Asking for a device that is
    not present raises ValueError naming the ones that are.
    """
    import torch

    if preferred is None or preferred == "auto":
        preferred = os.environ.get(DEVICE_ENV) or "auto"
    found = available_devices()
    if preferred == "auto":
        return torch.device(found[0])
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"not a device name: {preferred!r} (expected one of "
                         f"{', '.join(found)}, or 'auto')") from err
    if device.type not in found:
        raise ValueError(f"device {preferred!r} is not available on this machine; "
                         f"available: {', '.join(found)}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {preferred!r} does not exist: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device=None) -> str:
    """A human-readable name of the device: the GPU's name, or the CPU model."""
    import torch

    device = torch.device(device) if device is not None else select_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_model()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


# ----------------------------------------------------------------------------- seeding

def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated.

    With deterministic=True, also ask torch for deterministic kernels (slower on GPU).
    Returns the seed, so `seed = seed_everything(seed)` reads naturally.
    """
    import numpy as np
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return seed


# ----------------------------------------------------------------------------- info

def _version(module_name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:
        return None


def environment_info(device=None) -> dict[str, Any]:
    """Versions, device, threads and date: what `duat info`, a result record and a benchmark
    carry (one set of keys for the same facts). `device`: the one used (default: the one
    select_device picks)."""
    import torch

    from duat import __version__

    device = select_device() if device is None else torch.device(device)
    info: dict[str, Any] = {
        "duat": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "device": device.type,
        "device_name": device_name(device),
        "available_devices": available_devices(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "profile": profile(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return info


# ----------------------------------------------------------------------------- threads

@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run the block with torch using `n` intra-op threads (None: leave the count as it is),
    and restore the earlier count afterwards, also on error. Yields the count in force."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(whole("threads", n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def format_info(info: dict[str, Any]) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
