"""Published specs of common GPUs, so `afinar plan` can say whether a run fits and how long it takes.

Which figure each field holds, and why:

- `memory_gib`: the nominal memory (the "GB" of a GPU's name is binary: 80 GB of HBM is 80 GiB). A bit less is
  usable: an A100-SXM4-80GB reports 81 251 MiB to deviceQuery, a T4 with ECC on 15 102 MiB; the planner keeps a
  margin for that and for the CUDA context.
- `peak_tflops["fp32"]`: non-tensor FP32 (CUDA cores). An fp32 run's matmuls run there: PyTorch leaves TF32 off for
  matmuls by default (`torch.backends.cuda.matmul.allow_tf32 = False`).
- `peak_tflops["fp16"]` / `["bf16"]`: tensor-core peak, **dense** (NVIDIA's datasheets print the 2:4 structured
  sparsity figure, twice the dense one, with an asterisk; training dense weights never reaches it), with **FP32
  accumulate**. PyTorch autocast's fp16/bf16 matmuls accumulate in fp32 (cuBLAS's default compute type), and GeForce
  cards run FP16-with-FP32-accumulate at half the FP16-accumulate rate their marketing quotes (data-center cards run
  both at the same rate). bf16 always accumulates in fp32. `bf16` is absent where the GPU has no bf16 tensor cores
  (Turing: RTX 2060, T4); a bf16 run there is not possible (afinar picks fp16).
- `memory_bandwidth_gbs`: peak DRAM bandwidth in GB/s (10^9 bytes/s), as published.

Each entry's `source` names where every number was read. Peak figures are at the published boost clock; laptops and
power-capped cards run lower (see the RTX 3050 Laptop entry). A value that could not be sourced stays None and its
entry says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    key: str  # short lowercase id: `afinar plan --gpu t4`
    name: str
    memory_gib: float
    peak_tflops: dict[str, float | None] = field(hash=False)  # "fp32", "fp16", "bf16" (absent: no such tensor cores)
    memory_bandwidth_gbs: float | None
    source: str


# Fraction of the tensor-core (or fp32) peak a fine-tuning step reaches in practice: model FLOPs utilization (MFU),
# "the ratio of the observed throughput (tokens-per-second) relative to the theoretical maximum throughput of a system
# operating at peak FLOPs", counting only the forward+backward FLOPs the model needs, not recomputation (PaLM,
# Chowdhery et al. 2022, appendix B; quoted at https://glennklockwood.com/garden/mfu). FLOPs per token, as in
# bench/train_throughput.py: LoRA 4·N (forward 2·N plus the backward's input gradients 2·N; the frozen base gets no
# weight gradients; NVIDIA NeMo Automodel counts LoRA at (1 + 1 + r)/3 of full training for the same reason,
# github.com/NVIDIA-NeMo/Automodel/pull/786), full fine-tuning 6·N.
# AN ASSUMPTION TO BE CALIBRATED (bench/train_throughput.py on the GPU, its MFU column), not a measurement of afinar:
# - lora 0.25: IBM's fms-acceleration benchmark (scripts/benchmarks/refs/a100_80gb.csv, github.com/foundation-model-
#   stack/fms-acceleration; also in its pull request #14) trains Mistral-7B with LoRA r=16 on q/k/v/o on one
#   A100-80GB at 3 597.6 tokens/s (batch 4) and 3 632.4 (batch 8), the Trainer's train_tokens_per_second: with
#   Mistral-7B's ≈7.24e9 parameters, 3 597.6 × 4 × 7.24e9 / 312e12 = 33 % MFU.
#   Rounded down because afinar's bases are 5–50× smaller: narrower matrices and LoRA's extra small matmuls weigh
#   more (PEFT's maintainers: "if the hidden dimension is quite low ... that overhead will be quite considerable",
#   github.com/huggingface/peft/issues/925), and "the same H100 will show 60% MFU on a well-tuned dense transformer
#   with FlashAttention and 15% MFU on the same model trained naively in eager PyTorch" (technolynx-site.pages.dev/
#   post/model-flops-utilization-ai-training).
# - full 0.35: the same fms-acceleration CSV trains Mistral-7B fully on one A100-80GB at 3 048.6 tokens/s (batch 8):
#   3 048.6 × 6 × 7.24e9 / 312e12 = 42 % MFU; Llama 3.1's pretraining reported 38–43 % (glennklockwood.com/garden/
#   mfu). Rounded down for the same reasons.
# Not measured for fp32 runs on a GPU: the same fractions are used there.
ACHIEVABLE_FRACTION: dict[str, float] = {"lora": 0.25, "full": 0.35}

_HALF_RATE = ("GeForce: FP16 tensor with FP32 accumulate runs at half the FP16-accumulate rate and equals 2× the "
              "non-tensor FP32 TFLOPS on Ampere/Ada GeForce (GA102 whitepaper figures for the RTX 3080: FP32 29.8, "
              "FP16 59.5, BF16 59.5, quoted in github.com/huggingface/transformers/issues/14608)")

DEVICES: dict[str, Device] = {d.key: d for d in (
    Device(
        key="rtx2060", name="GeForce RTX 2060 6 GB", memory_gib=6,
        peak_tflops={"fp32": 6.45, "fp16": 26.0},
        memory_bandwidth_gbs=336.0,
        source=("fp32 6.451 TFLOPS and bandwidth 336.0 GB/s: TechPowerUp data as shown on fpsbench.com/compare/gpu/"
                "nvidia-quadro-m6000-vs-nvidia-geforce-rtx-2060 (NVIDIA's launch specs: 6.5 TFLOPS, 336 GB/s, "
                "segmentnext.com/2019/01/07/nividia-rtx-2060-announced). fp16: NVIDIA's launch figure, 52 TFLOPS of "
                "deep learning from 240 tensor cores (tomsguide.com/us/nvidia-rtx-2060-release-date-price-specs,"
                "news-28992.html; newatlas.com/nvidia-geforce-rtx-2060-gpu/57919), is FP16 with FP16 accumulate "
                "(Turing has no sparsity); GeForce Turing runs FP32 accumulate at half rate (Turing whitepaper, as "
                "cited in github.com/tensorflow/tensorflow/issues/24531) -> 52 / 2 = 26.0, derived, not printed by "
                "NVIDIA; hmc-tech.com's 206.44 TOPS INT4 dense gives 25.8 by the same ratios. No bf16 (Turing)."),
    ),
    Device(
        key="rtx3050-4gb", name="GeForce RTX 3050 Laptop GPU 4 GB (80 W)", memory_gib=4,
        peak_tflops={"fp32": 7.13, "fp16": 14.25, "bf16": 14.25},
        memory_bandwidth_gbs=192.0,
        source=("fp32 7.13, FP16 Tensor (FP32 Accumulate) 14.25, BF16 Tensor 14.25 TFLOPS (dense) for the 80 W "
                "variant at 1740 MHz: hmc-tech.com/gpu/nvidia-geforce-rtx-4050-laptop-30w-vs-nvidia-geforce-rtx-"
                "3050-laptop-80w. The laptop's power limit is 35-80 W with boost clocks 1058-1740 MHz "
                "(notebookcheck figures as quoted on gerready.blogg.se); hmc-tech gives 5.8 TFLOPS fp32 for the 50 W "
                "variant: a low-power laptop runs up to ~20-40 % below these peaks. Bandwidth: 128-bit GDDR6 at "
                "12000 MHz effective (cpu-gpu.alldbin.com GeForce-RTX-3050-4GB-mobile page) -> 128/8 × 12 = 192 GB/s, "
                "computed from that page, not printed there. " + _HALF_RATE + "."),
    ),
    Device(
        key="rtx3050-8gb", name="GeForce RTX 3050 8 GB (desktop)", memory_gib=8,
        peak_tflops={"fp32": 9.1, "fp16": 18.2, "bf16": 18.2},
        memory_bandwidth_gbs=224.0,
        source=("Tom's Hardware spec table (republished at holynerdvana.blogspot.com/2022/11/blog-post.html): FP32 "
                "9.1 TFLOPS, FP16 TFLOPS (Sparsity) 36 (73), bandwidth 224 GB/s (also TechPowerUp: 9.098 TFLOPS, "
                "224.0 GB/s, sysrqmts.com); NVIDIA's launch figure 73 Tensor TFLOPS (stealthoptional.com/how-to/"
                "rtx-3050-power-teraflops-gigabytes) is the sparse FP16-accumulate one. Dense FP16 with FP32 "
                "accumulate = 36.4 / 2 = 18.2 (= 2 × fp32; hmc-tech.com's 291.14 TOPS INT4 sparse gives the same "
                "18.2), derived. " + _HALF_RATE + "; bf16 runs at the FP32-accumulate rate."),
    ),
    Device(
        key="rtx3060", name="GeForce RTX 3060 12 GB", memory_gib=12,
        peak_tflops={"fp32": 12.74, "fp16": 25.3, "bf16": 25.3},
        memory_bandwidth_gbs=360.0,
        source=("fp32 12.74 TFLOPS and bandwidth 360.0 GB/s (15 Gbps × 192 bit): TechPowerUp data as shown on "
                "sysrqmts.com/ru/gpus/compare/nvidia-geforce-rtx-3060-vs-nvidia-rtx-a6000 (hmc-tech.com: 12.74 "
                "TFLOPS, 360 GB/s). fp16: NVIDIA's launch figure, 101 tensor TFLOPS (mmntech.ca/2021/01/12/nvidia-"
                "announces-rtx-3060-as-successor-to-legendary-gtx-1060; techtaks.com), is sparse FP16 accumulate "
                "like the RTX 3050's 73 -> dense 50.5 -> FP32 accumulate 25.3, derived (2 × fp32 = 25.5; hmc-tech's "
                "407.6 TOPS INT4 sparse gives 25.5). " + _HALF_RATE + "; bf16 runs at the FP32-accumulate rate."),
    ),
    Device(
        key="rtx4060", name="GeForce RTX 4060 8 GB", memory_gib=8,
        peak_tflops={"fp32": 15.11, "fp16": 30.23, "bf16": 30.23},
        memory_bandwidth_gbs=272.0,
        source=("fp32 15.11, FP16 Tensor (FP32 Accumulate) 30.23 (FP16 accumulate 60.46), BF16 Tensor 30.23 TFLOPS "
                "dense at 2460 MHz: hmc-tech.com/gpu/nvidia-geforce-rtx-4060-vs-nvidia-geforce-rtx-4060. Bandwidth "
                "272.0 GB/s (17 Gbps × 128 bit): TechPowerUp data as shown on fpsbench.com/compare/gpu/nvidia-"
                "geforce-rtx-4060-vs-nvidia-t600. A measured fp16 GEMM with fp32 accumulation reached ~31.0 TFLOP/s "
                "on an RTX 4060 (github.com/triton-lang/triton/issues/10851), i.e. the peak at real boost clocks."),
    ),
    Device(
        key="t4", name="Tesla T4 16 GB", memory_gib=16,
        peak_tflops={"fp32": 8.1, "fp16": 65.0},
        memory_bandwidth_gbs=320.0,
        source=("NVIDIA T4 datasheet figures: single precision 8.1 TFLOPS, mixed precision (FP16 multiply, FP32 "
                "accumulate) 65 TFLOPS, 16 GB GDDR6 at 320 GB/s; read in geektopia.es (8.1 / 65 TFLOPS), "
                "pc.watch.impress.co.jp/docs/news/1142896.html (FP16 65 TFLOPS, FP16 products accumulated in FP32) "
                "and heise.de (320 GB/s); TechPowerUp via sysrqmts.com/en/gpus/nvidia/tesla/t4: 8.141 / 65.13 "
                "TFLOPS, 320.0 GB/s. No bf16 (Turing). A 70 W card: it throttles under sustained load."),
    ),
    Device(
        key="l4", name="L4 24 GB", memory_gib=24,
        peak_tflops={"fp32": 30.29, "fp16": 121.0, "bf16": 121.0},
        memory_bandwidth_gbs=300.0,
        source=("NVIDIA L4 datasheet: FP16 Tensor Core 242 TFLOPS with sparsity (grokipedia.com/page/"
                "NVIDIA_L4_vs_L40S), TF32 120 TFLOPS with sparsity and max memory bandwidth 300 GB/s "
                "(store.sourcecode.com L4 spec sheet) -> dense FP16 121 (data-center card: FP32 accumulate at full "
                "rate); BF16 runs at the FP16 rate (hmc-tech.com/gpu/nvidia-l4-vs-nvidia-l40 lists BF16 Tensor = FP16 "
                "Tensor), so 121 too, derived. fp32 30.29 TFLOPS: TechPowerUp data as shown on fpsbench.com/compare/"
                "gpu/nvidia-l4-vs-nvidia-tesla-m40 (300.1 GB/s there)."),
    ),
    Device(
        key="a100-40gb", name="A100 SXM4 40 GB", memory_gib=40,
        peak_tflops={"fp32": 19.5, "fp16": 312.0, "bf16": 312.0},
        memory_bandwidth_gbs=1555.0,
        source=("NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf) as tabulated at "
                "glennklockwood.com/garden/processors/A100: FP32 19.5, FP16 312 (624 sparse), BF16 312 (624 "
                "sparse) TFLOPS; same figures in the upb-pc2 A100 40GB page (\"*With sparsity\"). Bandwidth "
                "1,555 GB/s for the 40 GB parts (PCIe and SXM): thundercompute.com/blog/nvidia-a100-specs-full-guide "
                "and techpowerup.com/gpu-specs/a100-sxm4-40-gb.c3506."),
    ),
    Device(
        key="a100-80gb", name="A100 SXM4 80 GB", memory_gib=80,
        peak_tflops={"fp32": 19.5, "fp16": 312.0, "bf16": 312.0},
        memory_bandwidth_gbs=2039.0,
        source=("NVIDIA A100 datasheet (r4) as tabulated at glennklockwood.com/garden/processors/A100: same FLOPS as "
                "the 40 GB part (FP32 19.5, FP16/BF16 312 dense, 624 sparse), 80 GB HBM2e at 2,039 GB/s for SXM; "
                "thundercompute.com/blog/nvidia-a100-specs-full-guide: SXM 80GB 2,039 GB/s (PCIe 80GB: 1,935)."),
    ),
    Device(
        key="h100", name="H100 SXM5 80 GB", memory_gib=80,
        peak_tflops={"fp32": 67.0, "fp16": 989.0, "bf16": 989.0},
        memory_bandwidth_gbs=3350.0,
        source=("NVIDIA H100 datasheet table as reproduced at archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html "
                "(H100 SXM): FP32 67 TFLOPS, BF16/FP16 Tensor Core 1,979 TFLOPS \"Shown with sparsity. "
                "Specifications 1/2 lower without sparsity\" -> 989 dense, memory 80 GB, bandwidth 3,350 GB/s; "
                "glennklockwood.com/garden/processors/h100: FP16/BF16 matrix 989.4 dense; the 989 dense figure is "
                "confirmed in github.com/foundation-model-stack/fms-fsdp/issues/89."),
    ),
)}
