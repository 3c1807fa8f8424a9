"""Numeric precision, memory layout and compilation of a run: what ``train.precision``, ``train.channels_last`` and ``train.compile`` mean on a device.

``resolve(train_cfg, device)`` turns the config's choices (``auto`` included) into a
:class:`Precision`; the engine and the commands then use the same three tools:

- :func:`autocast`: the forward pass in the resolved dtype (``torch.autocast``);
- :func:`inference`: :func:`autocast` plus ``torch.inference_mode`` for passes without gradients;
- :func:`full_precision`: a region where autocast is off, for what must stay fp32 (the
  quantizer's distances and EMA statistics, losses, metrics).

``auto`` picks bf16 autocast where the hardware computes in bf16 (CUDA devices that support
it; CPUs with AVX512-BF16 or AMX), fp16 with a gradient scaler on older CUDA devices, and
fp32 elsewhere: on a CPU without native bf16, bf16 is emulated and slower than fp32
(docs/benchmarks.md, "Precision and layout"). Channels-last (``channels_last_3d``) is picked
by ``auto`` on CUDA in reduced precision only (cuDNN's tensor-core 3D convolutions work in
that layout); on CPU the measurements disagreed between families and runs (docs/benchmarks.md,
"Precision and layout"), so ``auto`` leaves it off there (the VQ-VAE has its own
``net.channels_last``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PRECISIONS", "Precision", "resolve", "autocast", "inference", "full_precision", "prepare_model",
           "to_layout", "cpu_flags", "cpu_model", "cpu_has_native_bf16", "cpu_info"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags that mean bf16 arithmetic in hardware (x86: AVX512-BF16 dot products, AMX tiles;
# aarch64: the BF16 extension)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclasses.dataclass(frozen=True)
class Precision:
    """The resolved settings of a run on one device.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"``.
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the autocast dtype; fp32 means no autocast).
        channels_last: models and 5D batches in ``torch.channels_last_3d``.
        compile: the training model goes through ``torch.compile``.
        reason: why ``auto`` chose ``name`` (or ``"set in the config"``).
    """

    device_type: str = "cpu"
    name: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    reason: str = "set in the config"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return _DTYPES.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (``torch.amp.GradScaler``); bf16 has fp32's range."""
        return self.name == "fp16"

    def record(self) -> dict[str, Any]:
        """What a run records per epoch (``metrics.csv``): ``precision``, ``channels_last``, ``compile``."""
        return {"precision": self.name, "channels_last": int(self.channels_last), "compile": int(self.compile)}

    def describe(self) -> str:
        layout = "channels_last_3d" if self.channels_last else "contiguous"
        compiled = ", torch.compile" if self.compile else ""
        return f"{self.name} on {self.device_type} ({self.reason}), {layout}{compiled}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``); empty if unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16(flags: set[str] | None = None, capability: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on aarch64).

    ``flags`` default to :func:`cpu_flags`; ``capability`` to torch's dispatch level
    (``torch.backends.cpu.get_cpu_capability()``). An x86 CPU whose flags claim AVX512-BF16 still
    needs torch to dispatch AVX512 kernels (``ATEN_CPU_CAPABILITY=avx2`` turns them off).
    """
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return capability.upper().startswith("AVX512")
    return "bf16" in flags and not capability.upper().startswith("AVX")  # aarch64 BF16 extension


def cpu_info() -> dict[str, Any]:
    """CPU model, the flags that matter for precision, torch's dispatch level and :func:`cpu_has_native_bf16`."""
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "bf16")
    return {"model": cpu_model(), "flags": [f for f in wanted if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "bf16_native": cpu_has_native_bf16(flags)}


def _auto_precision(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA device with bf16"
        return "fp16", "auto: CUDA device without bf16, fp16 with a gradient scaler"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: CPU with native bf16 (AVX512-BF16/AMX)"
    return "fp32", f"auto: {device.type} without native bf16"


def resolve(train_cfg: Mapping[str, Any], device: torch.device | str) -> Precision:
    """The settings ``train_cfg`` (``precision``, ``channels_last``, ``compile``, ``amp``) give on ``device``.

    ``train.amp: false`` (the switch of runs made before ``train.precision``) keeps ``auto`` at fp32.
    fp16 on a CPU is refused by torch's CPU autocast for most 3D ops, so it resolves to bf16 there.
    """
    device = torch.device(device)
    wanted = str(train_cfg.get("precision", "auto"))
    if wanted == "auto":
        name, reason = ("fp32", "train.amp is false") if train_cfg.get("amp", True) is False else \
            _auto_precision(device)
    else:
        name, reason = wanted, "set in the config"
    if name == "fp16" and device.type != "cuda":
        name, reason = "bf16", "fp16 asked for on a CPU: bf16 instead (fp16 needs a CUDA gradient scaler)"
    layout = train_cfg.get("channels_last", "auto")
    channels_last = device.type == "cuda" and name != "fp32" if layout == "auto" else bool(layout)
    return Precision(device.type, name, channels_last, bool(train_cfg.get("compile", False)), reason)


def for_commands(precision: Precision) -> Precision:
    """What a command's pass through a trained model (evaluate, reconstruct, encode, attention, sampling) runs in.

    The run's precision on CUDA; fp32 on CPU whatever the run trained in: one volume's pass costs well
    under a second there, and a written volume must not depend on whether this CPU has native bf16
    (the same run's reconstruction differs by ~3e-3 between bf16 and fp32), nor differ from the
    exported bundle's; and ``evaluate``'s figures must not depend on it either. Validation during
    training runs in the training precision (the engine's, not this).
    """
    if precision.device_type == "cpu" and precision.name != "fp32":
        return dataclasses.replace(precision, name="fp32", reason="commands on CPU run in fp32")
    return precision


def autocast(precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the resolved dtype; a no-op for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(precision.device_type, dtype=precision.dtype)


@contextlib.contextmanager
def inference(precision: Precision, grad: bool = False) -> Iterator[None]:
    """A pass of a trained model: :func:`autocast`, and ``torch.inference_mode`` unless ``grad`` (Grad-CAM needs it).

    Outputs come in the autocast dtype: callers cast what they keep with ``.float()``.
    """
    with contextlib.ExitStack() as stack:
        if not grad:
            stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(precision))
        yield


def full_precision(device: torch.device | str | torch.Tensor) -> contextlib.AbstractContextManager:
    """A region computed in fp32 inside an autocast region (losses, distances, statistics, metrics).

    Tensors made outside it keep their dtype: cast inputs with ``.float()`` inside.
    """
    device_type = device.device.type if isinstance(device, torch.Tensor) else torch.device(device).type
    return torch.autocast(device_type, enabled=False)


def prepare_model(model: nn.Module, precision: Precision) -> nn.Module:
    """``model`` in the resolved layout (in place; parameters stay fp32: autocast casts per op)."""
    if precision.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return model


def to_layout(batch: Any, precision: Precision) -> Any:
    """Every 5D floating tensor of a (nested) batch in ``channels_last_3d`` when the layout asks for it."""
    if not precision.channels_last:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 5 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last_3d)
        return batch
    if isinstance(batch, dict):
        return {k: to_layout(v, precision) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_layout(v, precision) for v in batch)
    return batch
