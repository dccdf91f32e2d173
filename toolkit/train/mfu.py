"""Model FLOPs utilisation (MFU): the FLOPs a training step must do, from the model's shapes, over the time it
took, against the GPU's peak for the precision in use.

Training FLOPs = 3 x the forward pass's (the backward pass costs about twice the forward: gradients with respect
to the activations and to the weights), and a forward pass is 2 FLOPs per multiply-accumulate. The MACs come
from the architecture adapter's ``count_macs`` (linear layers at every position, attention's T x T products,
the head); for a transformer that is the familiar ``6 x parameters x tokens`` plus the attention term. A device
missing from the table gets no MFU at all rather than a figure against a guessed peak.
"""
from __future__ import annotations

from typing import Any

# Dense (no structured sparsity) peak TFLOP/s by precision, from the vendors' datasheets. NVIDIA quotes tensor
# figures "with sparsity"; the dense figure is half of it.
#   H100 SXM5 / H200 SXM: NVIDIA H100 Tensor Core GPU datasheet (2023) and H200 datasheet (2024): FP32 67,
#     TF32 989 sparse, BF16/FP16 1,979 sparse.
#   H100 PCIe: same datasheet: FP32 51, TF32 756 sparse, BF16/FP16 1,513 sparse.
#   H100 NVL / H200 NVL: FP32 60, TF32 835 sparse, BF16/FP16 1,671 sparse.
#   A100 (SXM4 and PCIe, 40 and 80 GB): NVIDIA A100 datasheet: FP32 19.5, TF32 156, BF16/FP16 312 (dense).
#   L4: NVIDIA L4 datasheet: FP32 30.3, TF32 120 sparse, BF16/FP16 242 sparse.
#   Jetson AGX Orin 64 GB (16 SMs @ 1.3 GHz): Jetson AGX Orin series technical brief: GPU 5.3 FP32 TFLOP/s,
#     170 sparse INT8 TOPS -> 85 dense -> FP16/BF16 tensor 42.5 dense (half the INT8 rate on Ampere), TF32 half
#     of FP16 (21.3). Orin NX and Orin Nano share 8-SM GPUs at different clocks (918 vs 625 MHz), which the name
#     and SM count cannot tell apart: they are left out rather than given a peak that may be 1.5x off.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "AGX Orin": {"fp32": 5.3, "tf32": 21.3, "bf16": 42.5, "fp16": 42.5},
}

# torch.cuda.get_device_name() -> a table entry: (words that must all appear, SM count or None, entry). First match
# wins, so the more specific names come first.
_NAMES: list[tuple[tuple[str, ...], int | None, str]] = [
    (("H200", "NVL"), None, "H200 NVL"),
    (("H200",), None, "H200"),
    (("H100", "NVL"), None, "H100 NVL"),
    (("H100", "PCIE"), None, "H100 PCIe"),
    (("H100",), None, "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM5 part
    (("A100",), None, "A100"),
    (("L4",), None, "L4"),
    (("ORIN",), 16, "AGX Orin"),  # Jetson reports "Orin"; the AGX module's GPU has 16 SMs
]


def peak_entry(name: str, sm_count: int | None = None) -> str | None:
    """The table entry for a CUDA device name (and its SM count), or None when the device is not known."""
    words = name.upper().replace("-", " ").split()
    for needed, sms, entry in _NAMES:
        if all(w in words for w in needed) and (sms is None or sms == sm_count):
            return entry
    return None


def effective_precision(precision: str, tf32: bool) -> str:
    """The tensor-core rate a step runs at: fp32 training runs its matmuls in TF32 when torch allows it."""
    return "tf32" if precision == "fp32" and tf32 else precision


def peak_flops(name: str, precision: str, sm_count: int | None = None, tf32: bool = False) -> float | None:
    """Peak FLOP/s of the device for ``precision`` (fp32 | bf16 | fp16), None when not known."""
    entry = peak_entry(name, sm_count)
    if entry is None:
        return None
    tflops = PEAK_TFLOPS[entry].get(effective_precision(precision, tf32))
    return tflops * 1e12 if tflops else None


def train_flops(macs_per_example: int, examples: int) -> float:
    """FLOPs of one training step: 2 FLOPs per MAC forward, x3 for forward + backward."""
    return 6.0 * macs_per_example * examples


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak; None without a peak or a time."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / peak


class MfuMeter:
    """What the loop asks per step: the FLOPs of a batch (MACs cached per sequence length) and the device's peak.

    ``active`` is False off CUDA, on an unknown device, or for a model the architecture adapters cannot read:
    then the loop records no MFU.
    """

    def __init__(self, model: Any, device: Any, precision: str, token_head: bool) -> None:
        self.model, self.token_head = model, token_head
        self.peak: float | None = None
        self._macs: dict[int, int | None] = {}
        if getattr(device, "type", None) == "cuda":
            import torch

            props = torch.cuda.get_device_properties(device)
            tf32 = torch.backends.cuda.matmul.allow_tf32
            self.peak = peak_flops(props.name, precision, props.multi_processor_count, tf32)
        self.active = self.peak is not None and self.macs(1) is not None

    def macs(self, seq_len: int) -> int | None:
        if seq_len not in self._macs:
            from toolkit.arch import adapter_for
            from toolkit.errors import UserError

            try:
                self._macs[seq_len] = int(adapter_for(self.model).count_macs(self.model, seq_len, self.token_head))
            except (UserError, AttributeError, TypeError):
                self._macs[seq_len] = None
        return self._macs[seq_len]

    def step_flops(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of one micro-batch (its padded length: the device computes the padding too)."""
        ids = batch.get("input_ids")
        if ids is None:
            ids = next((v for v in batch.values() if hasattr(v, "shape")), None)
        seq = int(ids.shape[1]) if ids is not None and len(ids.shape) > 1 else 1
        n = int(ids.shape[0]) if ids is not None and len(ids.shape) else 1
        macs = self.macs(seq)
        return train_flops(macs, n) if macs else 0.0


__all__ = ["PEAK_TFLOPS", "peak_entry", "peak_flops", "train_flops", "mfu", "MfuMeter", "effective_precision"]
