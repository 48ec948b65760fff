#!/usr/bin/env bash
# Comprobación rápida de las rutas GPU de `afinar train` en un equipo con una GPU NVIDIA (menos de 5 min en una H200,
# contando la primera conversión del modelo incluido). Desde un clon nuevo:
#   make install TORCH=torch && bench/gpu_check.sh
# Con otro entorno que ya tenga torch con CUDA y afinar instalado:  PYTHON=/ruta/al/python bench/gpu_check.sh
# Cada comprobación entrena 3 pasos de recipes/enfermeria.yaml sobre smollm2-135m en una carpeta temporal:
#   a) bf16   b) fp16 (con GradScaler)   c) QLoRA 4 bits (instala bitsandbytes si falta) y c') su fusión
#   d) FSDP2 con 1 GPU (recipes/accelerate/fsdp.yaml)   e) DDP con 1 GPU (recipes/accelerate/ddp.yaml)
# Opcional: WITH_DEEPSPEED=1 añade f) DeepSpeed ZeRO-2 con 1 GPU (instala deepspeed si falta; tarda más).
# Cada una imprime además el plan (memoria por fórmula y medida, paso previsto) junto al pico y el paso reales.
# Sigue tras un fallo; al final, una línea OK/FALLO por comprobación, y sale con 1 si alguna falló.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The documented commands (`afinar train`, `accelerate launch`) from the same environment as $PYTHON.
BIN=$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH="$BIN:$PATH"
STEPS=3
TIMEOUT=${TIMEOUT:-300}  # seconds per check
WORK=$(mktemp -d "${TMPDIR:-/tmp}/afinar-gpu-check.XXXXXX")

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total --format=csv
"$PYTHON" - <<'EOF'
import importlib.metadata as md

import torch

print(f"torch {torch.__version__} · CUDA {torch.version.cuda} · cuDNN {torch.backends.cudnn.version()} · "
      f"cuda disponible: {torch.cuda.is_available()}")
print(" · ".join(f"{name} {md.version(name)}" for name in ("afinar", "accelerate", "transformers", "peft")))
if not torch.cuda.is_available():
    raise SystemExit("torch no ve la GPU: instala un torch con CUDA (make install TORCH=torch) y revisa nvidia-smi.")
EOF
if ! command -v afinar >/dev/null || ! command -v accelerate >/dev/null; then
  echo "faltan las órdenes afinar o accelerate junto a $PYTHON: make install TORCH=torch" >&2
  exit 2
fi
echo "Registros y ejecuciones en $WORK"

SUMMARY=()
FAILED=0

# check ID DESCRIPTION PRECISION DISTRIBUTED SCALER COMMAND...: runs COMMAND plus the short-run flags, then checks
# the run folder. SCALER: yes = the last checkpoint holds a GradScaler state, no = it holds none, - = not checked.
check() {
  local id=$1 desc=$2 precision=$3 distributed=$4 scaler=$5
  shift 5
  local out="$WORK/$id" log="$WORK/$id.log" start=$SECONDS status=OK
  echo
  echo "== $id) $desc"
  echo "+ $* --max-steps $STEPS --output $out --sobrescribir --sin-progreso"
  if ! timeout "$TIMEOUT" "$@" --max-steps "$STEPS" --output "$out" --sobrescribir --sin-progreso >"$log" 2>&1; then
    status=FALLO
    echo "  la orden falló (o pasó de ${TIMEOUT} s); la causa y el final de $log:"
    grep -iE '(^|[^a-z])error [A-Z][0-9]{3}:|^[A-Za-z_.]+(Error|Exception): ' "$log" | head -n 5 | sed 's/^/  > /' || true
    tail -n 15 "$log" | sed 's/^/  | /'
  fi
  if ! "$PYTHON" - "$out" "$precision" "$distributed" "$scaler" "$STEPS" <<'EOF'
import json
import math
import sys
from pathlib import Path

run, precision, distributed, scaler, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
info_file, metrics_file = run / "afinar_run.json", run / "metrics.jsonl"
if not info_file.is_file():
    print(f"  falta {info_file}")
    raise SystemExit(1)
info = json.loads(info_file.read_text(encoding="utf-8"))
hardware = info.get("hardware") or {}
print(f"  hardware: {json.dumps(hardware, ensure_ascii=False)} · procesos: {info.get('processes')} · "
      f"distribuido: {info.get('distributed')}")
records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
    if metrics_file.is_file() else []
losses = [r for r in records if "loss" in r]
print(f"  última pérdida: {json.dumps(losses[-1], ensure_ascii=False) if losses else 'ninguna'}")
# Plan and reality (issue 15): the predicted peak (formula and measured at the start) and step, and what happened.
plan, steps_s = info.get("plan") or {}, [r["step_seconds"] for r in losses[1:] if "step_seconds" in r]
if plan:
    print(f"  plan: memoria {plan.get('formula_memory_gb')} GiB (fórmula), {plan.get('memory_gb')} GiB (medida al "
          f"empezar) · pico real {info.get('memory_peak_gb')} GiB · paso previsto {plan.get('step_seconds')} s, "
          f"real {sum(steps_s) / len(steps_s) if steps_s else float('nan'):.3f} s")
problems = []
if hardware.get("device") != "cuda":
    problems.append(f"device {hardware.get('device')!r}, se esperaba 'cuda'")
if hardware.get("precision") != precision:
    problems.append(f"precisión {hardware.get('precision')!r}, se esperaba {precision!r}")
if info.get("distributed") != distributed:
    problems.append(f"distribuido {info.get('distributed')!r}, se esperaba {distributed!r}")
if not losses or losses[-1].get("step") != steps or not math.isfinite(losses[-1]["loss"]):
    problems.append(f"no hay una pérdida finita del paso {steps} en {metrics_file.name}")
# 0 would mean the norm was taken over tensors without gradients (e.g. parameters collected before FSDP2 replaced
# them), so neither measured nor clipped.
elif "grad_norm" in losses[-1] and not (math.isfinite(losses[-1]["grad_norm"] or 0) and losses[-1]["grad_norm"]):
    problems.append(f"grad_norm {losses[-1]['grad_norm']!r} en el paso {steps}: se esperaba un número finito > 0")
if scaler != "-":
    import torch

    states = sorted(run.glob("checkpoints/step-*/trainer_state.pt"))
    if not states:
        problems.append("no hay checkpoints/step-*/trainer_state.pt para ver el GradScaler")
    else:
        state = torch.load(states[-1], map_location="cpu", weights_only=False).get("scaler")
        print(f"  GradScaler en {states[-1].parent.name}: {state}")
        if (scaler == "yes") != bool(state):
            problems.append("falta el estado del GradScaler" if scaler == "yes" else "hay GradScaler sin fp16")
for problem in problems:
    print(f"  FALLO: {problem}")
raise SystemExit(1 if problems else 0)
EOF
  then
    status=FALLO
  fi
  SUMMARY+=("$(printf '%-5s  %s) %s  (%d s)' "$status" "$id" "$desc" $((SECONDS - start)))")
  if [[ $status != OK ]]; then FAILED=1; fi
}

RECIPE=recipes/enfermeria.yaml
QLORA_RECIPE="$WORK/enfermeria-4bit.yaml"
"$PYTHON" - "$RECIPE" "$QLORA_RECIPE" <<'EOF'
import sys

import yaml

recipe = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
recipe["name"] = recipe["name"] + "-4bit"
recipe.setdefault("model", {})["quantization"] = "4bit"
with open(sys.argv[2], "w", encoding="utf-8") as f:
    yaml.safe_dump(recipe, f, allow_unicode=True, sort_keys=False)
EOF

check a "CUDA bf16" bf16 NO no afinar train "$RECIPE" --precision bf16
check b "CUDA fp16 + GradScaler" fp16 NO yes afinar train "$RECIPE" --precision fp16

if ! "$PYTHON" -c "import bitsandbytes" 2>/dev/null; then
  echo
  echo "== instalando bitsandbytes para c)"
  "$PYTHON" -m pip install --quiet "bitsandbytes>=0.49" || echo "  no se pudo instalar bitsandbytes"
fi
# precision auto: bf16 on any GPU that supports it (Ampere or newer); the check expects the H200's bf16.
check c "QLoRA 4 bits (bitsandbytes)" bf16 NO - afinar train "$QLORA_RECIPE" --precision auto

# c') The QLoRA run's merge (issue 27): into the unquantised base, never into the 4-bit layers; the merged model must
# be plain float tensors and equal to base + adapter (merge's own check, G004 otherwise), and afinar_merge.json says
# how far it is from the training-time model (4-bit base + adapter) on CUDA.
echo
echo "== c') fusión de la ejecución QLoRA (base sin cuantizar + adaptador)"
start=$SECONDS
if [[ -f "$WORK/c/afinar_run.json" ]] && timeout "$TIMEOUT" afinar merge "$WORK/c" --output "$WORK/c-merged" >"$WORK/c-merge.log" 2>&1 \
   && "$PYTHON" - "$WORK/c-merged" <<'EOF2'
import json
import sys
from pathlib import Path

from safetensors import safe_open

folder = Path(sys.argv[1])
summary = json.loads((folder / "afinar_merge.json").read_text(encoding="utf-8"))
print(f"  comprobación: {summary['check']} · qlora: {json.dumps(summary.get('qlora'), ensure_ascii=False)}")
dtypes = set()
for shard in folder.glob("*.safetensors"):
    with safe_open(shard, "pt") as f:
        dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
print(f"  tipos en los safetensors: {sorted(dtypes)}")
ok = summary.get("ok") and summary.get("qlora") and dtypes <= {"F32", "F16", "BF16"}
raise SystemExit(0 if ok else 1)
EOF2
then
  SUMMARY+=("$(printf '%-5s  %s) %s  (%d s)' OK "c'" "fusión QLoRA sobre la base sin cuantizar" $((SECONDS - start)))")
else
  tail -n 15 "$WORK/c-merge.log" 2>/dev/null | sed 's/^/  | /'
  SUMMARY+=("$(printf '%-5s  %s) %s  (%d s)' FALLO "c'" "fusión QLoRA sobre la base sin cuantizar" $((SECONDS - start)))")
  FAILED=1
fi

check d "FSDP2, 1 GPU (recipes/accelerate/fsdp.yaml)" bf16 FSDP - \
  accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 -m afinar train "$RECIPE" --precision bf16
check e "DDP, 1 GPU (recipes/accelerate/ddp.yaml)" bf16 MULTI_GPU - \
  accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 1 -m afinar train "$RECIPE" --precision bf16

if [[ ${WITH_DEEPSPEED:-0} == 1 ]]; then
  if ! "$PYTHON" -c "import deepspeed" 2>/dev/null; then
    echo
    echo "== instalando deepspeed para f)"
    "$PYTHON" -m pip install --quiet deepspeed || echo "  no se pudo instalar deepspeed"
  fi
  check f "DeepSpeed ZeRO-2, 1 GPU (recipes/accelerate/deepspeed-zero2.yaml)" bf16 DEEPSPEED - \
    accelerate launch --config_file recipes/accelerate/deepspeed-zero2.yaml --num_processes 1 -m afinar train "$RECIPE" \
    --precision bf16
fi

echo
echo "== Resumen (registros en $WORK)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
