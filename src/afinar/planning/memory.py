"""Peak memory of a training run, in parts a user can act on, and the verdict against the device's memory.

    total = runtime + base weights + trainable weights + gradients and optimizer + the step (activations kept for
            the backward, the loss's logits chunks, the backward's temporaries) [+ the CPU allocator's reuse]

- **Base weights**: every frozen parameter in the dtype training keeps it in (`training.load_dtype`: bf16/fp16 on
  a GPU; on a CPU fp32, with the linear layers and embeddings stored in bf16 under bf16 autocast); with 4-bit
  (QLoRA, NF4 with double quantization, bitsandbytes) the body's linear weights take 0.5 B + their quantization
  constants (one fp8 absmax per 64 weights and one fp32 per 256 absmax: 0.127 bits per weight), the embeddings,
  norms and output head stay 16-bit.
- **Trainable weights** 4 B each (fp32 master weights), **gradients** 4 B, **AdamW** two fp32 states, 8 B: 16 B per
  trainable parameter in all (LoRA: the adapter; `method: full`: every weight). The gradients are created by the
  backward, so they are part of the traced step (not counted twice).
- **The step**: traced on an empty model (planning/trace.py), for the largest micro-batch of the recipe's data.
- **Runtime**: on a CPU, the process's own memory with PyTorch, transformers and PEFT imported and the data and
  tokenizer loaded, before the model (measured: the planner and `afinar train` run in such a process); on a
  GPU, the CUDA context and cuBLAS workspace (0.5 GiB, an assumption: 300–500 MiB is what nvidia-smi shows for a
  PyTorch process before its first tensor, and its kernels' modules add to it).
- **CPU allocator**: glibc keeps freed blocks for reuse instead of returning them, and one training step's many
  different tensor sizes leave its heap larger than what is alive at any moment. Measured on SmolLM2-135M (bf16,
  AMD EPYC, glibc 2.36), over the first steps after loading: a first step of 16 tokens added 105 MiB (kernels'
  buffers: CPU_FIRST_STEP); at 512 tokens (LoRA all-linear) the resident memory grew by 1 202 MiB for a traced peak
  of 598 MiB (with glibc's reuse of large blocks off, `mallopt(M_MMAP_THRESHOLD, 64 KiB)`, it grew by 659 MiB, but
  steps took twice as long); and with gradient checkpointing it grew about as much as without it (enfermeria.yaml:
  the heap keeps the room the recomputation churns through). The allowance is CPU_FIRST_STEP + CPU_ALLOCATOR_FACTOR
  × the traced peak of the same step *without* gradient checkpointing, the factor fitted on three runs (the demo's
  recipe; enfermeria.yaml with and without checkpointing: it came out between 0.8 and 1.15) and checked on sixteen
  by bench/plan_accuracy.py. That holds where the linear weights are stored in bf16 (a CPU with AVX512-BF16/AMX):
  the loader's fp32 copies of them, freed by the cast, leave the heap room the steps reuse. With fp32 weights (a
  CPU without bf16: AVX2 only; or `method: full`) nothing is freed at loading and the heap grows with the weights
  too: Qwen2.5-shaped 0.5B and 1.5B models (fp32, LoRA all-linear r16, 512-token micro-batches) held 2.7 and
  7.2 GiB beyond weights and traced step, against 1.7 and 3.3 GiB allowed: the plan was 14 % and 23 % short (the
  −27 % seen on a 0.64B model, issue 27). There the allowance is CPU_FIRST_STEP + CPU_ALLOCATOR_FACTOR_FP32 ×
  (the traced peak without checkpointing + the weights), fitted on SmolLM2-135M, 0.5B and 1.5B (0.61, 0.75, 0.79:
  0.75; bench/plan_accuracy.py --formas). Fitted over the first 4–8 steps: the heap still crept by 0.1–0.2 GiB a
  step there (0.5B), so a long run may end somewhat above it. On a CPU `afinar plan` also measures by default,
  and its total is the larger of the formula and the measured peak.
  With tcmalloc or jemalloc (afinar/heap.py preloads one into `afinar train`'s training process, and `afinar plan`
  runs under it too, when the system has one) the heap keeps little beyond what is alive: the nursing recipe in fp32
  (AVX2 kernels only, 2-core AMD EPYC) peaked at 1.571 GiB under tcmalloc for 1.522 GiB of runtime, weights and
  traced step, where glibc's allowance was 0.92 GiB (`afinar train recipes/enfermeria.yaml --max-steps 8` with
  AFINAR_ALLOCATOR on tcmalloc, its plan.json). The allowance there is CPU_FIRST_STEP + CPU_ALLOCATOR_FACTOR_SPANS
  × the traced peak: one measurement at 135M, on the safe side of it.
  On a GPU PyTorch's caching allocator rounds and splits blocks: +10 % of the step, an assumption.
- **Loading** on a CPU reads the weights in fp32 first (then casts the linear layers to bf16): for small steps the
  process's peak is there, so the total is the larger of loading and training. That is for an fp32 checkpoint
  (the converted GGUF files): its fp32 weights stay mapped from the file while the bf16 copies are made. A 16-bit
  checkpoint (the Hub's) is converted to fp32 tensors of the process's own, then each cast frees its fp32 layer:
  runtime + 4 B per parameter. Its file's pages are mapped while converting too (0.9 GiB on the 0.5B shape: 3.1 GiB
  peak for 0.2 + 1.84 GiB), but they are clean page cache that the kernel drops under pressure (the 1.5B shape, bf16,
  peaked at 7.7 GiB where fp32 weights + bf16 copies would have been 9.1): not counted.

Verdict against the memory the run can use (free RAM plus what the planner itself holds; a table GPU's memory less
what its driver keeps, devices.py): "cabe" up to 85 %, "justo" up to 100 %, "no cabe" above.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from afinar.heap import ALLOCATOR_NAMES

GIB = 2**30
NF4_BYTES = 0.5 + 0.127 / 8  # 4 bits + double-quantized absmax constants, per quantized weight
GPU_CONTEXT = int(0.5 * GIB)
GPU_ALLOCATOR_FACTOR = 0.10
CPU_FIRST_STEP = 128 * 2**20  # kernels' buffers of a first step (measured: 105 MiB, above)
CPU_ALLOCATOR_FACTOR = 1.0  # bf16 storage: × the traced peak of the step without gradient checkpointing (fitted)
CPU_ALLOCATOR_FACTOR_FP32 = 0.75  # fp32 weights: × (that peak + the weights' bytes) (fitted, above)
CPU_ALLOCATOR_FACTOR_SPANS = 0.10  # tcmalloc/jemalloc: × the traced peak of the step (one measurement, above)


def cpu_allocator_bytes(step_peak_no_gc: int, weights: int, fp32_weights: bool, allocator: str = "glibc") -> int:
    """What the training process's heap holds beyond the live tensors after a few training steps: glibc's, or
    tcmalloc's or jemalloc's when afinar/heap.py preloads one (see the module docstring)."""
    if allocator in ALLOCATOR_NAMES:
        return CPU_FIRST_STEP + int(CPU_ALLOCATOR_FACTOR_SPANS * step_peak_no_gc)
    if fp32_weights:
        return CPU_FIRST_STEP + int(CPU_ALLOCATOR_FACTOR_FP32 * (step_peak_no_gc + weights))
    return CPU_FIRST_STEP + int(CPU_ALLOCATOR_FACTOR * step_peak_no_gc)


def checkpoint_is_16bit(config) -> bool:
    """A checkpoint stored in bf16/fp16 (the Hub's are; afinar's converted GGUF files are fp32)."""
    stored = str(getattr(config, "dtype", None) or "")  # 4.57 maps a config.json "torch_dtype" to dtype
    return stored.replace("torch.", "") in ("bfloat16", "float16")
FITS, TIGHT = 0.85, 1.0


@dataclass(frozen=True)
class Part:
    key: str  # stable id for --json
    label: str  # Spanish, for the table
    bytes: int
    note: str = ""


@dataclass
class MemoryEstimate:
    parts: list[Part]
    load_peak: int  # the process while loading the weights (CPU); 0 when loading is never the peak
    device_bytes: int  # the device's memory (GPU) or this machine's RAM
    available_bytes: int  # what the run can use: free RAM plus what the planner itself holds, or the GPU's
    measured: dict = field(default_factory=dict)  # from --calibrar: the real peak, when measured

    @property
    def training_peak(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def formula_total(self) -> int:
        return max(self.training_peak, self.load_peak)

    @property
    def total(self) -> int:
        """The predicted peak: the formula's, or with `--calibrar` the larger of it and the peak measured over the
        calibration steps (the measurement sees the heap of the first steps only; glibc's keeps growing for a few
        more, which the formula's allocator allowance covers: bench/plan_accuracy.py, measured −26 % alone)."""
        return max(self.formula_total, self.measured.get("peak_bytes", 0))

    @property
    def verdict(self) -> str:
        ratio = self.total / max(self.available_bytes, 1)
        return "cabe" if ratio <= FITS else "justo" if ratio <= TIGHT else "no cabe"

    def part(self, key: str) -> int:
        return sum(p.bytes for p in self.parts if p.key == key)


def weight_bytes(model, quantized: bool) -> int:
    """Bytes of the frozen weights as training keeps them, from the prepared (empty) model's own dtypes."""
    import torch

    total = 0
    seen = set()
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen or param.requires_grad:
                continue
            seen.add(id(param))
            is_linear = type(module) is torch.nn.Linear or type(module).__name__ == "Linear"  # PEFT wraps base_layer
            if quantized and is_linear and param.dim() == 2 and param is not embeddings and param is not head_weight:
                total += int(param.numel() * NF4_BYTES)
            else:
                total += param.numel() * param.element_size()
    return total


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_peak_bytes(model, runtime: int, device_type: str, full: bool) -> int:
    """CPU: weights read in fp32 (4 B each), and the bf16 copies of the linear layers made while those are mapped."""
    if device_type != "cpu":
        return 0
    params = {id(p): p for p in model.parameters()}.values()
    fp32 = sum(p.numel() for p in params) * 4
    converted = sum(p.numel() * p.element_size() for p in params if not p.requires_grad and p.element_size() == 2)
    return runtime + fp32 + (0 if full else converted)


# --- measuring the real peak (this process) ------------------------------------------------------------------------


def reset_peak(device_type: str) -> int:
    """Start measuring a new peak; returns the peak so far (the process's, including loading). CPU: Linux's VmHWM,
    reset by writing 5 to /proc/self/clear_refs (Linux ≥ 4.0); elsewhere the peak cannot be reset (0)."""
    import torch

    if device_type == "cuda":
        so_far = torch.cuda.max_memory_reserved()
        torch.cuda.reset_peak_memory_stats()
        return so_far
    so_far = _vm_hwm()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass
    return so_far


def measured_peak(device_type: str) -> int:
    """The peak since `reset_peak`: CPU resident memory (VmHWM), or on a GPU what PyTorch reserved plus what the
    process holds outside it (CUDA context, cuBLAS workspace: the device's used memory minus PyTorch's reserve)."""
    import torch

    if device_type == "cuda":
        free, total = torch.cuda.mem_get_info()
        outside = max(0, total - free - torch.cuda.memory_reserved())
        return torch.cuda.max_memory_reserved() + outside
    return _vm_hwm()


def _vm_hwm() -> int:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss (bytes on macOS), never reset

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
