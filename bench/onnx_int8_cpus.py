"""ONNX INT8 on CPUs with and without VNNI: the quantisation afinar used before issue 11 against today's.

    .venv/bin/python bench/onnx_int8_cpus.py [ONNX_EXPORT_DIR] [--tokens 120] [--preguntas 1] [--sin-emulacion]

ONNX_EXPORT_DIR is an `afinar export --formato onnx` folder (RUN/export/onnx); without it, the embedded SmolLM2 base
is exported to a temporary folder. Three INT8 copies of the same fp32 graph are made — 8-bit weights (what afinar
wrote before), 7-bit weights (`reduce_range`, today's first try) and 7-bit with the MLP's down projection in fp32
(today's first try) — and each answers first-aid questions greedily (repetition penalty 1.1; `--preguntas` of them,
the export check's probe first):

- on this CPU, whatever it is (`lscpu` says whether it has VNNI), and
- on an emulated x86 CPU without VNNI (`qemu-x86_64 -cpu Haswell`, Debian's `qemu-user`: AVX2, no AVX-512, no VNNI),
  where onnxruntime's u8×s8 kernels add pairs of products in 16 bits with saturation. Emulation is ~30× slower: its
  tokens/s mean nothing, its tokens are exactly what such a CPU computes.

Prints, per copy and CPU: whether the first token is the fp32 graph's, the largest logit difference at the prompt's
last position, how many answer tokens agree with fp32, whether the answer ends on its own, and the answer's start.
Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name: (reduce_range, MatMul name substrings kept in fp32)
    "8 bits (antes)": (False, ()),
    "7 bits": (True, ()),
    "7 bits + down_proj fp32": (True, ("down_proj",)),
}
QUESTIONS = ["¿Cómo actúo si una persona se desmaya en la calle?", "¿Qué hago si un niño se atraganta?"]


def child(graph: str, config: str, ids: str, tokens: int, out: str) -> None:
    """Runs in the measured process (maybe under qemu): onnxruntime only, no torch."""
    from afinar.inference.onnx_runtime import OnnxCausalLM
    from afinar.inference.sampling import greedy_decode

    prompt = json.loads(ids)
    model = OnnxCausalLM(Path(graph), json.loads(Path(config).read_text(encoding="utf-8")))
    last = model.logits(prompt)[-1]
    started = time.perf_counter()
    answer, stopped = greedy_decode(model.stepper(), prompt, {int(i) for i in json.loads(os.environ["EOS"])}, tokens, 1.1)
    seconds = time.perf_counter() - started
    Path(out).write_text(json.dumps({"last": last.tolist(), "answer": answer, "stopped": stopped,
                                     "tok_s": len(answer) / seconds}), encoding="utf-8")


def export_base(into: Path) -> Path:
    from afinar.export.onnx import export_fp32_graph
    from afinar.models import resolve_base

    export_fp32_graph(Path(resolve_base("smollm2-135m")), into / "base")
    return into / "base"


def main() -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from afinar.export.onnx import matmuls_named, quantize_int8
    from afinar.export.reference import PROBE_QUESTION
    from afinar.hardware import int8_cpu_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", help="carpeta ONNX de afinar export (por defecto, la base incluida)")
    parser.add_argument("--tokens", type=int, default=120, help="máximo de tokens por respuesta")
    parser.add_argument("--preguntas", type=int, default=1, choices=range(1, 4), help="cuántas preguntas (1-3)")
    parser.add_argument("--sin-emulacion", action="store_true", help="solo esta CPU")
    args = parser.parse_args()

    qemu = shutil.which("qemu-x86_64") if platform.machine() == "x86_64" and not args.sin_emulacion else None
    if not args.sin_emulacion and qemu is None:
        print("aviso: sin qemu-x86_64 (apt-get install qemu-user) solo se mide esta CPU")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.folder) if args.folder else export_base(tmp)
        config = folder / "config.json"
        tokenizer = AutoTokenizer.from_pretrained(folder)
        eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
        env = dict(os.environ, EOS=json.dumps(eos if isinstance(eos, list) else [eos]))
        features = int8_cpu_features()
        cpus = {f"esta CPU ({features['procesador']}, {'con' if features['vnni'] else 'sin'} VNNI)": []}
        if qemu:
            cpus["emulada sin VNNI (qemu -cpu Haswell)"] = [qemu, "-cpu", "Haswell"]

        def run(graph: Path, prefix: list[str], ids: list[int]) -> dict:
            out = tmp / "out.json"
            subprocess.run([*prefix, sys.executable, __file__, "--child", str(graph), str(config), json.dumps(ids),
                            str(args.tokens), str(out)], check=True, env=env, stderr=subprocess.DEVNULL)
            return json.loads(out.read_text(encoding="utf-8"))

        graphs = {}
        for name, (reduce_range, keep_float) in VARIANTS.items():
            graphs[name] = tmp / f"{name.replace(' ', '_')}.onnx"
            source = folder / "onnx" / "model.onnx"
            quantize_int8(source, graphs[name], matmuls_named(source, keep_float), reduce_range=reduce_range)
        for question in [PROBE_QUESTION, *QUESTIONS][: args.preguntas]:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
            fp32 = run(folder / "onnx" / "model.onnx", [], ids)
            print(f"\n{question}\nfp32: {len(fp32['answer'])} tokens, {'termina solo' if fp32['stopped'] else 'no termina'}, "
                  f"{fp32['tok_s']:.1f} tok/s — «{tokenizer.decode(fp32['answer'])[:70]}…»")
            print(f"{'INT8':<26}{'CPU':<46}{'1er token':<11}{'máx|Δ|':>8}{'= fp32':>8}{'termina':>9}{'tok/s':>7}  respuesta")
            for name, graph in graphs.items():
                for cpu, prefix in cpus.items():
                    got = run(graph, prefix, ids)
                    same = next((i for i, (a, b) in enumerate(zip(got["answer"], fp32["answer"])) if a != b),
                                min(len(got["answer"]), len(fp32["answer"])))
                    first = "igual" if np.argmax(got["last"]) == np.argmax(fp32["last"]) else "DISTINTO"
                    delta = float(np.abs(np.array(got["last"]) - np.array(fp32["last"])).max())
                    text = tokenizer.decode(got["answer"]).replace("\n", " ")[:60]
                    print(f"{name:<26}{cpu:<46}{first:<11}{delta:>8.2f}{same:>8}{'sí' if got['stopped'] else 'no':>9}"
                          f"{got['tok_s']:>7.1f}  «{text}…» ({len(got['answer'])} tokens)", flush=True)

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6])
    else:
        main()
