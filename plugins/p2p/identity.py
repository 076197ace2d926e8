"""What a peer-access table depends on, and so what its cache is keyed by: the GPUs (their
UUIDs, in CUDA order), the NVIDIA driver, and how the GPUs are connected (the topology).

Each part is read without opening a CUDA context on another GPU and without a new
dependency: the driver from ``/proc/driver/nvidia/version`` (else NVML through
``pynvml``, else ``nvidia-smi``); the topology from ``nvidia-smi topo -m`` (else the
PCI addresses torch reports).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import attrs

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
NVIDIA_SMI_TIMEOUT_S = 20.0
UNKNOWN = "unknown"

# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 ..." or
# "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build ..."
_NVRM = re.compile(r"^NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)(?:\s|$)", re.MULTILINE)


@attrs.frozen
class GpuIdentity:
    """The GPUs this process sees, the driver, the topology; ``key`` names the cache entry."""

    uuids: tuple[str, ...] = attrs.field(converter=tuple)
    driver: str
    topology: str

    @property
    def key(self) -> str:
        parts = {"uuids": list(self.uuids), "driver": self.driver, "topology": self.topology}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def parse_driver_version(text: str) -> str | None:
    """The kernel module's version from the text of ``/proc/driver/nvidia/version``."""
    match = _NVRM.search(text)
    return match.group(1) if match else None


def driver_version(version_file: Path = DRIVER_VERSION_FILE) -> str:
    """The NVIDIA driver's version, or ``"unknown"``."""
    try:
        found = parse_driver_version(version_file.read_text())
    except OSError:
        found = None
    return found or _nvml_driver() or _smi_driver() or UNKNOWN


def _nvml_driver() -> str | None:
    try:
        import pynvml  # optional: nvidia-ml-py, where it is installed
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or failing: another source answers
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def _smi(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", *args],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def _smi_driver() -> str | None:
    out = _smi("--query-gpu=driver_version", "--format=csv,noheader")
    return out.splitlines()[0].strip() if out else None


def topology(torch: Any, count: int) -> str:
    """``nvidia-smi topo -m`` (the link between every GPU pair: NVLink, PCIe switch,
    host bridge...), else the GPUs' PCI addresses, else ``"unknown"``."""
    out = _smi("topo", "-m")
    if out:
        return "\n".join(line.rstrip() for line in out.strip().splitlines())
    addresses = []
    for d in range(count):
        props = torch.cuda.get_device_properties(d)
        bus = getattr(props, "pci_bus_id", None)
        if bus is None:
            return UNKNOWN
        domain = getattr(props, "pci_domain_id", 0)
        device = getattr(props, "pci_device_id", 0)
        addresses.append(f"{domain:04x}:{bus:02x}:{device:02x}")
    return "pci " + ",".join(addresses)


def gpu_identity(torch: Any) -> GpuIdentity:
    """The identity of the GPUs this process sees (CUDA_VISIBLE_DEVICES applies)."""
    count = torch.cuda.device_count()
    uuids = tuple(str(torch.cuda.get_device_properties(d).uuid) for d in range(count))
    return GpuIdentity(uuids, driver_version(), topology(torch, count))
