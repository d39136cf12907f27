"""Known dense peak matmul rates per chip, looked up from `jax.devices()[0].device_kind`.

TFLOP/s per chip (one GPU, or one TPU chip as JAX sees it), dense (no 2:4 sparsity). f32 is
the chip's plain FP32 rate (not TF32); TPUs publish only bf16 (their MXUs multiply in bf16;
f32 matmuls run as several bf16 passes). Sources:
  NVIDIA H100 SXM / PCIe, H200, A100, L4: the product datasheets (nvidia.com; the datasheets'
    bf16 "tensor core" figures are with sparsity, halved here);
  TPU v4, v5e, v5p, v6e: the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4,
    /v5e, /v5p, /v6e, "peak compute per chip (bf16)").
A CPU has no entry: its ceiling is the measured matmul (bench/throughput.py prints both).
"""
from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Peak:
  name: str
  bf16_tflops: float
  f32_tflops: float | None
  source: str


# Ordered: the first pattern (regex on the device kind, case-insensitive) that matches wins.
PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"H200", Peak("NVIDIA H200", 989.0, 67.0, "NVIDIA H200 datasheet")),
    (r"H100.*PCIe", Peak("NVIDIA H100 PCIe", 756.0, 51.0, "NVIDIA H100 datasheet")),
    (r"H100", Peak("NVIDIA H100 SXM", 989.0, 67.0, "NVIDIA H100 datasheet")),
    (r"A100", Peak("NVIDIA A100", 312.0, 19.5, "NVIDIA A100 datasheet")),
    (r"\bL4\b", Peak("NVIDIA L4", 121.0, 30.3, "NVIDIA L4 datasheet")),
    (r"TPU v4", Peak("TPU v4", 275.0, None, "cloud.google.com/tpu/docs/v4")),
    (r"TPU v5 ?(lite|e)", Peak("TPU v5e", 197.0, None, "cloud.google.com/tpu/docs/v5e")),
    (r"TPU v5", Peak("TPU v5p", 459.0, None, "cloud.google.com/tpu/docs/v5p")),
    (r"TPU v6", Peak("TPU v6e", 918.0, None, "cloud.google.com/tpu/docs/v6e")),
)


def lookup(device_kind: str) -> Peak | None:
  """The table row for a device kind ("NVIDIA H100 80GB HBM3", "TPU v5 lite", ...), or None."""
  for pattern, peak in PEAKS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      return peak
  return None


def markdown() -> list[str]:
  """The table, for a benchmark's output."""
  rows = ["| chip | bf16 TFLOP/s | f32 TFLOP/s | source |", "|---|---|---|---|"]
  for _, p in PEAKS:
    rows.append(f"| {p.name} | {p.bf16_tflops:g} | "
                f"{'—' if p.f32_tflops is None else f'{p.f32_tflops:g}'} | {p.source} |")
  return rows
