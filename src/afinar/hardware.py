"""Pick device and precision, and say why, so a user on an RTX 3050 or a laptop knows what happened."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from afinar import extras
from afinar.errors import AfinarError, install_hint

# bitsandbytes' CPU backend announces on import (PEFT and transformers import it too) that the Hub's optional
# `kernels` package is missing: that kernel only serves the repacked inference layout afinar turns off
# (models.load_model), so the warning would only mislead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" | "cpu"
    precision: str  # "fp32" | "bf16" | "fp16"
    reason: str

    @property
    def dtype(self):
        return torch_dtype(self.precision)

    @property
    def autocast_dtype(self):
        """Mixed precision runs the forward in this dtype while the LoRA weights stay fp32."""
        return None if self.precision == "fp32" else self.dtype


def torch_dtype(precision: str):
    """'fp32' | 'bf16' | 'fp16' → the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# A CPU without bf16, on one that has it: torch, oneDNN and MKL kept to AVX2 kernels (read when they load, so set
# before torch is imported; the benches' --sin-bf16). cpu_supports_bf16 then says no and training runs in fp32.
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_supports_bf16() -> bool:
    """Native bf16 (AVX512-BF16 or AMX) that torch may use: a CPU that has it, unless torch was told to stay on AVX2
    kernels (ATEN_CPU_CAPABILITY=avx2, also a way to see how afinar runs on a CPU without bf16)."""
    import os

    import torch

    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX", "AVX2"):
        return False
    # oneDNN runs the bf16 matmuls: capped below AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA=AVX2, AVX512_CORE…), it
    # emulates bf16 and is slower than fp32.
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if isa and isa != "ALL" and not isa.startswith(("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "AVX512_CORE_FP16")):
        return False
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


def int8_cpu_features() -> dict:
    """What decides how onnxruntime's INT8 kernels behave on this CPU, recorded beside every INT8 check.

    VNNI (AVX512-VNNI or AVX-VNNI) adds u8×s8 products in 32 bits; without it the AVX2 path adds pairs in 16 bits and
    can saturate (see export/onnx.py). Linux reads /proc/cpuinfo; elsewhere the flags are unknown (None)."""
    import platform

    info = {"procesador": platform.processor() or platform.machine(), "vnni": None, "avx512": None, "avx2": None}
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["procesador"] in ("", platform.machine()):
            info["procesador"] = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    info.update(vnni=bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags), avx512="avx512f" in flags,
                avx2="avx2" in flags)
    return info


def detect(precision: str = "auto", quantization: str = "none", cpu_only: bool = False) -> Hardware:
    """Device and precision for training; `cpu_only`: the CPU's choice even where there is a GPU (`afinar plan
    --dispositivo cpu`)."""
    import torch

    if torch.cuda.is_available() and not cpu_only:
        if quantization == "4bit":
            require_bitsandbytes(cpu=False)
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "auto":
            chosen = "bf16" if bf16 else "fp16"
            why = f"GPU {name}: " + ("admite bf16" if bf16 else "no admite bf16 (p. ej. serie RTX 20), se usa fp16")
        else:
            if precision == "bf16" and not bf16:
                raise AfinarError("H002", f"la GPU {name} no admite bf16; usa precision: fp16 o auto.")
            chosen, why = precision, f"GPU {name}: precisión pedida en la receta"
        return Hardware("cuda", chosen, why)

    if quantization == "4bit":
        version = require_bitsandbytes(cpu=True)
        reason = f"QLoRA 4-bit (NF4) en CPU con bitsandbytes {version}"
    if precision == "fp16":
        raise AfinarError("H003", "fp16 en CPU no está soportado para entrenar; usa auto, fp32 o bf16.")
    native_bf16 = cpu_supports_bf16()
    if quantization == "4bit":
        # bitsandbytes' CPU backend dequantizes NF4 to the compute dtype at each matmul; both fp32 and bf16 train
        # (checked on an AMD EPYC with AVX512-BF16). bf16 where the CPU has it natively, as for plain LoRA.
        chosen = precision if precision != "auto" else ("bf16" if native_bf16 else "fp32")
        note = " (aviso: esta CPU no tiene bf16 nativo, será lento)" if chosen == "bf16" and not native_bf16 else ""
        return Hardware("cpu", chosen, f"{reason}, cómputo en {chosen}{note}")
    if precision == "auto":
        if native_bf16:
            return Hardware("cpu", "bf16", "CPU con AVX512-BF16/AMX: autocast bf16")
        return Hardware("cpu", "fp32", "CPU sin instrucciones bf16 nativas (AVX512-BF16/AMX): fp32")
    why = "precisión pedida en la receta"
    if precision == "bf16" and not native_bf16:
        why += " (aviso: esta CPU no tiene bf16 nativo, será lento)"
    return Hardware("cpu", precision, f"CPU: {why}")


# On a CPU, QLoRA relies on bitsandbytes' CPU backend (NF4 quantize/dequantize, its matmul with autograd): the
# `qlora` extra's floor, 0.49, is the oldest checked here. On CUDA any importable version, as before.
BNB_CPU_MIN = (0, 49)


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes' version, or None when it cannot be imported (missing or broken)."""
    try:
        import bitsandbytes
    except (ImportError, OSError, RuntimeError):  # missing, blocked (sys.modules[...] = None) or a broken native lib
        return None
    return str(getattr(bitsandbytes, "__version__", "0"))


def _version_tuple(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def require_bitsandbytes(cpu: bool) -> str:
    """The bitsandbytes version QLoRA will use; H004 when it is missing, H005 when it is too old for the CPU."""
    version = bitsandbytes_version()
    if version is None:
        raise extras.missing_error("qlora", where="model.quantization")  # missing, or broken on import
    if cpu and _version_tuple(version) < BNB_CPU_MIN:
        raise AfinarError("H005", f"QLoRA 4-bit en CPU necesita bitsandbytes ≥ {'.'.join(map(str, BNB_CPU_MIN))} "
                                  f"(su backend de CPU); está instalado {version}.", where="model.quantization",
                          hint=install_hint("qlora"))
    return version


def bnb_4bit_config(compute_dtype):
    """QLoRA's quantization: NF4 with double quantization (Dettmers et al. 2023), matmuls in `compute_dtype`."""
    import torch

    require_bitsandbytes(cpu=not torch.cuda.is_available())
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
