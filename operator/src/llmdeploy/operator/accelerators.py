"""The accelerator catalogue: what each `spec.accelerator.type` means to the scheduler and to vLLM.

Compute capability decides which quantization kernels vLLM can run; memory bounds what fits.
Kept as data so validation, render and serving read one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AcceleratorType(StrEnum):
    NVIDIA_H200_141GB = "nvidia-h200-141gb"
    NVIDIA_H100_80GB = "nvidia-h100-80gb"
    NVIDIA_A100_80GB = "nvidia-a100-80gb"
    NVIDIA_A100_40GB = "nvidia-a100-40gb"
    NVIDIA_L40S = "nvidia-l40s"
    NVIDIA_L4 = "nvidia-l4"
    NVIDIA_A10G = "nvidia-a10g"
    NVIDIA_T4 = "nvidia-t4"
    NVIDIA_V100_32GB = "nvidia-v100-32gb"
    CPU = "cpu"


@dataclass(frozen=True)
class Accelerator:
    """One accelerator model as the operator sees it."""

    type: AcceleratorType
    # vLLM compares `major * 10 + minor` against each quantization method's minimum.
    compute_capability: int | None
    memory_gib: float | None
    # Ray's accelerator name (the `accelerator_type:<name>` resource Ray adds on such nodes).
    ray_accelerator_type: str | None
    # The GPU product label NVIDIA's GPU feature discovery puts on nodes.
    gpu_product: str | None

    @property
    def is_gpu(self) -> bool:
        return self.compute_capability is not None

    @property
    def capability_text(self) -> str:
        cc = self.compute_capability
        return "none (CPU)" if cc is None else f"{cc // 10}.{cc % 10}"


ACCELERATORS: dict[AcceleratorType, Accelerator] = {
    a.type: a
    for a in (
        Accelerator(AcceleratorType.NVIDIA_H200_141GB, 90, 141, "H200", "NVIDIA-H200"),
        Accelerator(AcceleratorType.NVIDIA_H100_80GB, 90, 80, "H100", "NVIDIA-H100-80GB-HBM3"),
        Accelerator(AcceleratorType.NVIDIA_A100_80GB, 80, 80, "A100-80G", "NVIDIA-A100-SXM4-80GB"),
        Accelerator(AcceleratorType.NVIDIA_A100_40GB, 80, 40, "A100-40G", "NVIDIA-A100-SXM4-40GB"),
        Accelerator(AcceleratorType.NVIDIA_L40S, 89, 48, "L40S", "NVIDIA-L40S"),
        Accelerator(AcceleratorType.NVIDIA_L4, 89, 24, "L4", "NVIDIA-L4"),
        Accelerator(AcceleratorType.NVIDIA_A10G, 86, 24, "A10G", "NVIDIA-A10G"),
        Accelerator(AcceleratorType.NVIDIA_T4, 75, 16, "T4", "Tesla-T4"),
        Accelerator(AcceleratorType.NVIDIA_V100_32GB, 70, 32, "V100", "Tesla-V100-SXM2-32GB"),
        Accelerator(AcceleratorType.CPU, None, None, None, None),
    )
}


def accelerator(kind: AcceleratorType) -> Accelerator:
    return ACCELERATORS[kind]
