"""The one device policy of every command that runs models (``--device``): the device asked for, or
CUDA when present, else the CPU. torch is imported only when a device is resolved."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdlens.config import ConfigError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
DEVICE_HELP = "device to run the models on: cpu, cuda, cuda:1, mps or auto (default: CUDA when present, else CPU)"


class DeviceError(ConfigError):
    """A device that is not a device, or one this machine does not have (a user error: exit 2)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; None or ``"auto"``: ``cuda`` when a CUDA device is
    present, else ``cpu``. A device this machine lacks is a :class:`DeviceError` naming what it has."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == AUTO):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"'{device}' is not a device: use cpu, cuda, cuda:N, mps or auto") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {device}: this machine has no CUDA device; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return resolved
