"""`afinar merge RUN`: fold the LoRA adapter into the base and check the result really is the same model.

A `method: full` run gets the same standalone, checked folder (its weights in the asked dtype, the recipe's
generation settings, the logits check)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from afinar.atomic import atomic_dir, require_free_space
from afinar.data.chat_format import folder_format, set_turn_end
from afinar.errors import AfinarError
from afinar.hardware import torch_dtype
from afinar.models import save_tokenizer
from afinar.runs import DATA_FINGERPRINT, MERGE_SUMMARY, RECIPE, load_ref, open_ref

PROBE = [
    {"role": "user", "content": "¿Qué debo hacer si alguien se quema la mano con agua hirviendo?"},
    {"role": "assistant", "content": "Enfría la quemadura con agua corriente durante unos veinte minutos."},
]
DTYPES = ("fp32", "bf16", "fp16")


def logits_agreement(reference, candidate) -> dict:
    """Max/mean absolute difference and share of positions with the same top-1 token."""
    diff = (reference.float() - candidate.float()).abs()
    same_top1 = (reference.argmax(-1) == candidate.argmax(-1)).float().mean()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "top1": float(same_top1)}


def tolerance_ok(stats: dict, dtype: str) -> bool:
    if dtype == "fp32":
        return stats["max_abs"] <= 1e-3
    # Half precision rounds every weight; ask for the same next tokens and a small mean error instead.
    return stats["top1"] >= 0.9 and stats["mean_abs"] <= 0.1


def merge(run: str | Path, output: str | Path | None = None, dtype: str = "fp32", overwrite: bool = False) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise AfinarError("G001", f"dtype '{dtype}' no válido; opciones: {', '.join(DTYPES)}")
    ref = open_ref(run)
    if not ref.is_run:
        raise AfinarError("G002", "esta carpeta ya es un modelo fusionado: no hay adaptador que fusionar.", where=str(run))
    output = Path(output) if output else ref.path / "merged"
    if output.exists() and not overwrite:
        raise AfinarError("G003", "la carpeta de salida ya existe.", where=str(output), hint="usa --sobrescribir u --output")

    # QLoRA: load_ref gives the base as trained (NF4, dequantized to fp32: runs.load_base_as_trained), so the merge
    # happens in float and the merged model is the model that trained and was evaluated; PEFT's own merge into the
    # 4-bit layers would round the sum back to 4 bits and leave Linear4bit layers no exporter reads.
    # Merge in fp32 for fidelity, then cast: rounding once is better than merging rounded weights.
    trained, tokenizer = load_ref(ref, dtype=torch.float32)
    trained.eval()
    probe = tokenizer.apply_chat_template(PROBE, return_tensors="pt")  # (1, T)
    with torch.no_grad():
        reference = trained(probe).logits[0]  # (T, V)
    # A full fine-tuning run is already a whole model: "merging" it is the same checked, standalone copy.
    merged = trained if ref.standalone else trained.merge_and_unload()
    source = "el modelo entrenado" if ref.standalone else "base+adaptador"
    merged = merged.to(torch_dtype(dtype))
    merged.config.name_or_path = str(output)
    # Plain transformers users get the stop token and the recipe's sampling from generation_config.json.
    gen = ref.generation
    # The run's end of turn (first) and the family's other stop ids, in config.json and generation_config.json alike.
    set_turn_end(merged, tokenizer, folder_format(ref.path, tokenizer).eos_token_ids)
    sampling = {"temperature": gen.temperature, "top_p": gen.top_p} if gen.temperature > 0 else {}
    merged.generation_config.update(
        do_sample=bool(sampling), repetition_penalty=gen.repetition_penalty, max_new_tokens=gen.max_new_tokens, **sampling
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(output.parent, sum(t.numel() * t.element_size() for t in merged.state_dict().values()), "G005")

    with atomic_dir(output, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        for name in (RECIPE, DATA_FINGERPRINT):
            if (ref.path / name).is_file():
                shutil.copy2(ref.path / name, tmp / name)
        # Check the files, not the object in memory: reload them the way any user would.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, use_safetensors=True)
        with torch.no_grad():
            candidate = reloaded(probe).logits[0]
        stats = logits_agreement(reference, candidate)
        ok = tolerance_ok(stats, dtype)
        summary = {"from_run": str(ref.path), "base": ref.base_path, "dtype": dtype, "check": stats, "ok": ok}
        if ref.qlora:
            summary["qlora"] = {"merged_into": "la base en NF4 (4 bits) con que se entrenó, descuantizada a fp32",
                                "note": "el modelo fusionado es el que se entrenó y evaluó (base NF4 + adaptador), en "
                                        "pesos normales; no la base original + adaptador"}
        (tmp / MERGE_SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        if not ok:
            raise AfinarError(
                "G004",
                f"el modelo fusionado no reproduce {source} (máx |Δlogits| {stats['max_abs']:.2e}, "
                f"top-1 igual en {stats['top1']:.0%}); no se guarda nada.",
                where=str(run),
            )
    print(
        f"Fusionado en {output} ({dtype}). Comprobación: logits del modelo fusionado vs {source}: "
        f"máx |Δ| = {stats['max_abs']:.2e}, media |Δ| = {stats['mean_abs']:.2e}, mismo token top-1 en {stats['top1']:.0%} ✓"
    )
    if ref.qlora:
        print("QLoRA: fusionado sobre la base en 4 bits (NF4) con que se entrenó, descuantizada a fp32: el modelo "
              "fusionado es el que se entrenó y evaluó.")
    return output


def merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--output", help="carpeta destino (por defecto RUN/merged)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
