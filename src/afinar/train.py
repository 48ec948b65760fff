"""`afinar train RECIPE`: LoRA fine-tuning with PEFT, in a loop that reads top to bottom.

recipe → seed → hardware → base + tokenizer → data → LoRA → optimizer/scheduler → loop (eval, checkpoints)
→ adapter + tokenizer + resolved recipe + metrics + data fingerprint in the run folder.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from afinar.atomic import atomic_dir, atomic_write_text
from afinar.config import Recipe, apply_overrides, dump_recipe, load_recipe
from afinar.data.preflight import REPORT_DIR
from afinar.errors import AfinarError
from afinar.models import save_tokenizer

CHECKPOINTS = "checkpoints"
RUN_INFO = "afinar_run.json"
METRICS = "metrics.jsonl"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A folder only gets its final name once fully written."""
    root = run_dir / CHECKPOINTS
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, scaler, step: int, keep_last: int) -> Path:
    import torch

    final = run_dir / CHECKPOINTS / f"step-{step:06d}"
    with atomic_dir(final, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> int:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())["step"]


def evaluate_loss(model, encoded: list, batch_size: int, pad_id: int, autocast) -> float | None:
    """Mean loss per trained token (answer tokens only) over `encoded`."""
    import torch

    from afinar.data.templates import collate, trained_tokens

    if not encoded:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i : i + batch_size], pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            n = trained_tokens(batch["labels"])
            with autocast():
                out = model(**batch)
            total += float(out.loss) * n
            tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _trim_metrics(run_dir: Path, step: int) -> None:
    """On resume, forget metrics logged after the checkpoint: they will be logged again."""
    if (run_dir / METRICS).is_file():
        kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
        atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def plot_losses(run_dir: Path) -> Path | None:
    rows = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="entrenamiento", color="#4c72b0", alpha=0.8)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validación", color="#dd8452")
    ax.set_xlabel("paso")
    ax.set_ylabel("pérdida (tokens de respuesta)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = run_dir / "loss.png"
    tmp = run_dir / ".loss.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, target)
    return target


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not checkpoint_dirs(run_dir):
            raise AfinarError("T002", "no hay ningún checkpoint completo para continuar.", where=str(run_dir))
        return
    # A data report from `afinar inspect` may already be there: it belongs beside the run, keep it.
    if run_dir.exists() and any(p.name != REPORT_DIR for p in run_dir.iterdir()):
        if not overwrite:
            raise AfinarError(
                "T003",
                "la carpeta de salida ya existe y no está vacía.",
                where=str(run_dir),
                hint="usa --resume para continuar, --output OTRA_CARPETA, o --sobrescribir para empezar de cero",
            )
        for entry in run_dir.iterdir():
            if entry.name != REPORT_DIR:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train(
    recipe: str | Path | Recipe,
    overrides: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from afinar import hardware
    from afinar.data.split import epoch_order
    from afinar.data.templates import collate, trained_tokens
    from afinar.data.validate import (
        encode,
        fingerprint,
        gather,
        raise_if_errors,
        report,
    )
    from afinar.models import load_model, load_tokenizer, resolve_base

    # --- recipe, run folder, seed -----------------------------------------------------------
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe = apply_overrides(recipe, overrides or {})
    cfg = recipe.train
    run_dir = recipe.run_dir()
    _prepare_run_dir(run_dir, resume, overwrite)
    seed_everything(cfg.seed)

    # --- hardware -------------------------------------------------------------------------
    hw = hardware.detect(cfg.precision, recipe.model.quantization)
    print(f"Hardware: {hw.device}, precisión {hw.precision} — {hw.reason}")
    autocast = (lambda: torch.autocast(hw.device, dtype=hw.autocast_dtype)) if hw.autocast_dtype else nullcontext

    # --- base model and data ----------------------------------------------------------------
    base_path = resolve_base(recipe.model.base)
    tokenizer = load_tokenizer(base_path)
    prepared = encode(gather(recipe.data), tokenizer, recipe.data)
    report(prepared, out=print, max_lines=20)
    raise_if_errors(prepared)
    train_set, val_set = prepared.train_encoded, prepared.val_encoded
    if not train_set:
        raise AfinarError("T004", "no queda ningún ejemplo de entrenamiento tras aplicar max_length.")
    # Weighted mixing works on encoded rows, so map each kept row back to its source file.
    row_source = {enc.where: i for i, enc in enumerate(train_set)}
    by_source: list[list[int]] = [[] for _ in recipe.data.sources]
    source_index = {s.path: k for k, s in enumerate(recipe.data.sources)}
    for example in prepared.train:
        if example.where in row_source:
            by_source[source_index[example.source]].append(row_source[example.where])
    sizes = [len(rows) for rows in by_source]
    weights = [s.weight for s in recipe.data.sources]
    if len(sizes) > 1:
        per_epoch = Counter(s for s, _ in epoch_order(sizes, weights, cfg.seed, 0))
        for k, source in enumerate(recipe.data.sources):
            print(f"  mezcla por época: {Path(source.path).name}: {per_epoch.get(k, 0)} de {sizes[k]} (peso {source.weight:g})")

    # Base weights in the training dtype on GPU; on CPU keep fp32 weights and let autocast do bf16 matmuls.
    load_dtype = hw.dtype if hw.device == "cuda" else torch.float32
    model = load_model(base_path, dtype=load_dtype, quantization=recipe.model.quantization, device=hw.device)
    model.config.use_cache = False
    if recipe.model.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    lora = recipe.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA: {trainable:,} parámetros entrenables de {total:,} ({100 * trainable / total:.2f} %)")

    # --- schedule -------------------------------------------------------------------------
    epoch_rows = len(epoch_order(sizes, weights, cfg.seed, 0))
    micro_per_epoch = math.ceil(epoch_rows / cfg.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    scaler = torch.amp.GradScaler("cuda") if hw.precision == "fp16" else None

    start_step = 0
    if resume:
        last = checkpoint_dirs(run_dir)[-1]
        start_step = load_checkpoint(last, model, optimizer, scheduler, scaler)
        _trim_metrics(run_dir, start_step)
        print(f"Continuando desde {last} (paso {start_step} de {total_steps})")
    atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))

    def micro_batches(first_micro: int):
        """Yield (epoch, batch) from global micro-batch index `first_micro` onwards, deterministically."""
        micro = first_micro
        while True:
            epoch, k = divmod(micro, micro_per_epoch)
            order = epoch_order(sizes, weights, cfg.seed, epoch)
            rows = [by_source[s][i] for s, i in order[k * cfg.batch_size : (k + 1) * cfg.batch_size]]
            yield epoch, collate([train_set[r] for r in rows], tokenizer.pad_token_id)
            micro += 1

    print(
        f"Datos: {len(train_set)} secuencias de entrenamiento, {len(val_set)} de validación; "
        f"{total_steps} pasos (lote {cfg.batch_size} × acumulación {cfg.grad_accum}; {steps_per_epoch} pasos por época)"
    )
    stream = micro_batches(start_step * cfg.grad_accum)
    if start_step == 0 and val_set:
        # LoRA's B starts at zero, so this is exactly the base model's held-out loss.
        base_loss = evaluate_loss(model, val_set, cfg.batch_size, tokenizer.pad_token_id, autocast)
        _append_metrics(run_dir, {"step": 0, "eval_loss": base_loss, "eval_ppl": math.exp(min(base_loss, 50))})
        print(f"Pérdida de validación inicial (modelo base): {base_loss:.4f}")

    # --- the loop -------------------------------------------------------------------------
    model.train()
    started = time.time()
    bar = tqdm(total=total_steps, initial=start_step, desc="Entrenando", unit="paso", disable=not progress, dynamic_ncols=True)
    loss_value = eval_loss = float("nan")
    for step in range(start_step + 1, total_steps + 1):
        t0 = time.time()
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        epoch = micro[-1][0]
        # Token-weighted loss over the whole step, so accumulation equals one large batch.
        n_step = sum(trained_tokens(b["labels"]) for _, b in micro)
        step_loss, step_tokens = 0.0, 0
        for _, batch in micro:
            batch = {k: v.to(hw.device) for k, v in batch.items()}  # input_ids/labels/attention_mask: (B, T)
            n_micro = trained_tokens(batch["labels"])
            with autocast():
                loss = model(**batch).loss * (n_micro / max(n_step, 1))
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += float(loss.detach())
            step_tokens += int(batch["attention_mask"].sum())
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss_value = step_loss
        elapsed = time.time() - t0
        record = {
            "step": step,
            "epoch": round(epoch + 1e-9, 4),
            "loss": loss_value,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens_per_s": step_tokens / max(elapsed, 1e-9),
        }
        if step % cfg.eval_every == 0 or step == total_steps:
            measured = evaluate_loss(model, val_set, cfg.batch_size, tokenizer.pad_token_id, autocast)
            if measured is not None:
                eval_loss = measured
                record.update(eval_loss=eval_loss, eval_ppl=math.exp(min(eval_loss, 50)))
        if step % cfg.log_every == 0 or "eval_loss" in record:
            _append_metrics(run_dir, record)
        if step % cfg.save_every == 0 and step != total_steps:
            save_checkpoint(run_dir, model, optimizer, scheduler, scaler, step, cfg.keep_last)
        bar.set_postfix(loss=f"{loss_value:.3f}", eval=f"{eval_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)
    bar.close()
    seconds = time.time() - started

    # --- artifacts ------------------------------------------------------------------------
    save_checkpoint(run_dir, model, optimizer, scheduler, scaler, total_steps, cfg.keep_last)
    with atomic_dir(run_dir / ".final", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    for item in (run_dir / ".final").iterdir():
        os.replace(item, run_dir / item.name)
    shutil.rmtree(run_dir / ".final", ignore_errors=True)
    atomic_write_text(run_dir / "data_fingerprint.json", json.dumps(fingerprint(prepared, recipe.data), indent=2, ensure_ascii=False))
    plot_losses(run_dir)
    info = {
        "base": recipe.model.base,
        "base_path": base_path,
        "hardware": {"device": hw.device, "precision": hw.precision, "reason": hw.reason},
        "steps": total_steps,
        "train_seconds": round(seconds, 1),
        "final_train_loss": loss_value,
        "final_eval_loss": eval_loss if not math.isnan(eval_loss) else None,
        "versions": _versions(),
    }
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2, ensure_ascii=False))
    print(f"Listo en {seconds:.0f} s. Adaptador, tokenizador, receta y métricas en {run_dir}")
    return run_dir


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("afinar", "torch", "transformers", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
