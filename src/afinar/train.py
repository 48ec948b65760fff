"""`afinar train RECIPE`: LoRA (PEFT) or full fine-tuning on 🤗 accelerate, in a recipe that reads top to bottom.

Stages: launch checks (nothing written before they pass) → data (tokenized Arrow cache) → model → optimizer and
schedule → resume → the loop → artifacts. The same command runs on one device, and under `accelerate launch` or
`torchrun` on several processes (DDP; FSDP2 and DeepSpeed ZeRO on GPUs): every process computes the same order of
micro-batches and trains on its share; only the main process writes the run folder.

Micro-batches hold up to `train.batch_size` examples and `train.tokens_per_batch` tokens, concatenated into one row
with position_ids restarting at each example (no padding; see data/templates.collate_packed), or padded and grouped
by length with `train.packing: false`. The loss of a step is exact per trained token across micro-batches and
processes: every micro-batch's summed cross-entropy is divided by the step's token count, all-reduced.
A stop request (runs.STOP_REQUEST, a file in the run folder) ends the loop at a step boundary like the time budget
does: held-out loss, checkpoint and every artifact, then a normal return (exit code 0); --resume continues.
Reusable pieces (checkpoints, RNG, the loss, metrics) live in afinar/training.py.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path

from afinar import ollama_store
from afinar.atomic import atomic_dir, atomic_write_text
from afinar.budget import BudgetPlan, out_of_time, plan_steps
from afinar.config import Recipe, apply_overrides, dump_recipe, load_recipe
from afinar.data.batching import (
    examples_of,
    shard_for_eval,
)
from afinar.data.chat_format import (
    check_turns_closed,
    recipe_tokenizer,
    set_turn_end,
    untrained_tokens,
    warm_up_tokens,
)
from afinar.data.pipeline import prepare_training_data
from afinar.data.templates import IGNORE, collate, collate_packed
from afinar.errors import AfinarError
from afinar.export.ollama import check_template as check_ollama_template
from afinar.models import load_config, save_tokenizer
from afinar.planning.estimate import DataShape, estimate, process_rss, resolve_target
from afinar.planning.memory import measured_peak, reset_peak
from afinar.planning.timing import fit_step_time
from afinar.runs import (
    CHECKPOINTS,
    DATA_FINGERPRINT,
    DATA_REPORT_DIR,
    PLAN,
    RECIPE,
    RUN_INFO,
    STOP_REQUEST,
)
from afinar.training import (
    ENGINE_STATE,
    append_metrics,
    checkpoint_dirs,
    flatten,
    held_out_loss,
    load_checkpoint,
    load_dtype,
    output_head,
    perplexity,
    plot_losses,
    prepare_for_training,
    read_metrics,
    remove_partial_checkpoints,
    resume_conflicts,
    rng_state,
    save_checkpoint,
    save_full_model,
    seed_everything,
    set_rng_state,
    token_loss_sum,
    trim_metrics,
)

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
__all__ = ["train", "read_metrics", "checkpoint_dirs", "RUN_INFO"]


# --- stage 0: checks that need nothing written ------------------------------------------------------------------


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not checkpoint_dirs(run_dir):
            raise AfinarError("T002", "no hay ningún checkpoint completo para continuar.", where=str(run_dir))
        return
    # A data report from `afinar inspect` may already be there: it belongs beside the run, keep it. A stop request
    # alone does not make the folder a run (train() removes a stale one).
    if run_dir.exists() and any(p.name not in (DATA_REPORT_DIR, STOP_REQUEST) for p in run_dir.iterdir()) and not overwrite:
        raise AfinarError(
            "T003",
            "la carpeta de salida ya existe y no está vacía.",
            where=str(run_dir),
            hint="usa --resume para continuar, --output OTRA_CARPETA, o --sobrescribir para empezar de cero",
        )


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        remove_partial_checkpoints(run_dir)
        shutil.rmtree(run_dir / ".final", ignore_errors=True)
    elif run_dir.exists():
        for entry in run_dir.iterdir():
            # A stop request here was made during loading (the stale one went at the start): it must still stop.
            if entry.name not in (DATA_REPORT_DIR, STOP_REQUEST):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_launch(hw, cfg) -> None:
    """What `accelerate launch` / `torchrun` asked for, checked against this machine before anything starts."""
    import torch

    truthy = ("1", "true", "yes")
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in truthy
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in truthy
    if (fsdp or deepspeed) and hw.device != "cuda":
        engine = "FSDP" if fsdp else "DeepSpeed"
        raise AfinarError(
            "T007", f"{engine} necesita GPU NVIDIA; en CPU solo se admite DDP (varios procesos con gloo).",
            hint="usa recipes/accelerate/ddp.yaml, o ningún --config_file para un solo proceso",
        )
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise AfinarError("T008", "la configuración pide DeepSpeed, pero no está instalado.", hint="pip install deepspeed")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("ACCELERATE_NUM_PROCESSES", "1")) or 1)
    if hw.device == "cuda":
        devices, unit = torch.cuda.device_count(), "GPU"
    else:
        devices, unit = os.cpu_count() or 1, "núcleos de CPU"
    if local > devices:
        raise AfinarError(
            "T009", f"se pidieron {local} procesos en este equipo y solo hay {devices} {unit}.",
            hint="baja --num_processes (accelerate) o --nproc_per_node (torchrun)",
        )
    if cfg.report_to != "none" and importlib.util.find_spec(TRACKER_PACKAGES[cfg.report_to]) is None:
        raise AfinarError(
            "T010", f"train.report_to: {cfg.report_to} necesita el paquete '{TRACKER_PACKAGES[cfg.report_to]}'.",
            hint=f"pip install {TRACKER_PACKAGES[cfg.report_to]}, o report_to: none",
        )


def _accelerator(hw, cfg, run_dir: Path):
    """accelerate decides processes and devices; afinar decides precision (accelerate would turn bf16 on any CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps its settings in process-wide singletons: a second train() in the same process (the demo,
    # tests, a notebook) with another precision would be refused. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[hw.precision]
    return Accelerator(
        cpu=hw.device == "cpu",
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(run_dir),
    )


# --- stage 2: model ---------------------------------------------------------------------------------------------


def _build_model(recipe: Recipe, base_path: str, hw, device, tokenizer, chat):
    """(model ready to train, ids of the template's tokens the base never trained: warmed up and trained too)."""
    from afinar.models import load_model

    full = recipe.method == "full"
    model = load_model(base_path, dtype=load_dtype(recipe, hw), quantization=recipe.model.quantization, device=device)
    cold = untrained_tokens(model, tokenizer, chat)
    if cold:
        warm_up_tokens(model, cold)
    model = prepare_for_training(model, recipe, hw, cold)
    if recipe.train.neftune_noise_alpha:
        # NEFTune (Jain et al. 2023): uniform noise on the input embeddings while training, scaled by
        # alpha/sqrt(seq_len·hidden), against memorising the data's exact wording. transformers' own hook (the one its
        # Trainer and TRL install); it adds nothing in eval mode, so validation and generation see clean embeddings.
        from transformers.trainer_utils import neftune_post_forward_hook

        embeddings = model.get_input_embeddings()
        embeddings.neftune_noise_alpha = recipe.train.neftune_noise_alpha
        embeddings.register_forward_hook(neftune_post_forward_hook)
    if recipe.train.compile:
        (model if full else model.get_base_model()).model.compile(dynamic=True)
    return model, cold


def _optimizer_step_seconds(optimizer, params: list) -> float:
    """One step of the run's own optimizer, timed without changing anything: zero gradients and a learning rate of
    0 leave every weight bitwise as it was (AdamW's update is lr × m / (√v + ε) and its decay × (1 − lr·wd)), and
    the state the steps created is dropped (the first real step creates it again). Negligible for LoRA; for full
    fine-tuning of SmolLM2-135M on a 2-core CPU it is a sizeable part of a step."""
    import collections

    import torch

    if not params:
        return 0.0
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for param in params:
        param.grad = torch.zeros_like(param)
    times = []
    try:
        for _ in range(2):  # the first also allocates the optimizer's state
            t0 = time.time()
            optimizer.step()
            if params[0].device.type == "cuda":
                torch.cuda.synchronize(params[0].device)
            times.append(time.time() - t0)
    finally:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        optimizer.state = collections.defaultdict(dict)
        for param in params:
            param.grad = None
    return times[-1]


# --- the recipe -------------------------------------------------------------------------------------------------


def train(
    recipe: str | Path | Recipe,
    overrides: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    force: bool = False,
    plan_only: bool = False,
):
    """Train as the recipe says; returns the run folder (LoRA adapter, or the whole model with `method: full`;
    tokenizer, recipe, metrics, plot).

    `resume` continues from the last complete checkpoint (refused when the recipe changed what the data order or
    the optimizer depend on, unless `force`); `overwrite` empties an existing run folder first. Before the weights
    are read, the plan's memory check (planning/) refuses a run that would not fit, unless `force`.
    `plan_only`: stop after measuring real steps and return the measured Plan (`afinar plan`); nothing is written."""
    import torch
    import yaml
    from accelerate.utils import broadcast_object_list
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from afinar import hardware
    from afinar.models import resolve_base

    started = time.time()
    # --- stage 0: recipe and launch checks (nothing is written before these pass) ---------------------------------
    recipe_path = None if isinstance(recipe, Recipe) else str(recipe)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe = apply_overrides(recipe, overrides or {})
    cfg = recipe.train
    run_dir = recipe.run_dir()
    if not plan_only:
        _check_run_dir(run_dir, resume, overwrite)
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else None  # the budget counts from here
    if cfg.max_minutes and cfg.max_steps:
        raise AfinarError(
            "T011", "un presupuesto de tiempo (--minutos / train.max_minutes) y un número fijo de pasos "
            "(--max-steps / train.max_steps) no van juntos: el presupuesto decide los pasos.",
            where="train.max_steps", hint="quita uno de los dos",
        )
    hw = hardware.detect(cfg.precision, recipe.model.quantization)
    _check_launch(hw, cfg)
    accelerator = _accelerator(hw, cfg, run_dir)
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    say = print if main else (lambda *args, **kwargs: None)
    stop_file = run_dir / STOP_REQUEST
    if main and not plan_only:  # a leftover request (a crash before it was removed) must not stop this run at once
        stop_file.unlink(missing_ok=True)
    seed_everything(cfg.seed)
    where = f"{processes} procesos ({accelerator.distributed_type.value})" if processes > 1 else hw.device
    say(f"Hardware: {where}, precisión {hw.precision} — {hw.reason}")

    # --- stage 1: data ----------------------------------------------------------------------------------------------
    with accelerator.main_process_first():  # the main process converts/tokenizes; the others read its cache
        base_path = resolve_base(recipe.model.base, download=True)
        if ollama_store.is_ollama_spec(recipe.model.base) and main:  # Ollama's Go template vs the GGUF's
            check_ollama_template(ollama_store.find_model(recipe.model.base), base_path)
        tokenizer, chat = recipe_tokenizer(base_path, recipe.data.template)
        check_turns_closed(tokenizer)  # M013 before any data is read: the end of turn is trained after every answer
        prepared = prepare_training_data(recipe, tokenizer, progress=progress and main, say=say)
    data, lengths, stream, val_plan = prepared.data, prepared.lengths, prepared.stream, prepared.val_plan

    # --- the plan's memory check, before any weight is read --------------------------------------------------------
    config = load_config(base_path)
    shape = DataShape.of(prepared, recipe, processes)
    target = resolve_target("local", recipe)
    runtime_bytes = process_rss()  # PyTorch, transformers, the data and tokenizer: everything but the model
    check = None
    if not resume:
        check = estimate(recipe, config, shape, target, measure_time=False, runtime_bytes=runtime_bytes, detailed=False)
        if check.memory.verdict == "no cabe" and not force:
            raise AfinarError(
                "T015", "según el plan, esta ejecución no cabe en la memoria de este equipo; "
                + check.explain_out_of_memory(), where="train",
                hint=f"prueba: {check.suggestion_text()}; o añade --forzar para intentarlo igualmente "
                     f"(detalle: afinar plan RECETA)",
            )

    def collated(dataset, micro_batch: list[list[int]]) -> dict:
        flat = examples_of(micro_batch)
        columns = dataset[flat]  # reads only these rows from the memory-mapped Arrow file, in this order
        examples = iter({"input_ids": i, "labels": lab} for i, lab in zip(columns["input_ids"], columns["labels"]))
        rows = [[next(examples) for _ in row] for row in micro_batch]
        batch = (collate_packed(rows, tokenizer.pad_token_id) if cfg.packing
                 else collate([example for row in rows for example in row], tokenizer.pad_token_id))
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    # --- stage 2: model ---------------------------------------------------------------------------------------------
    # FSDP places (and may shard or lazily load) the weights itself in prepare().
    model, cold = _build_model(recipe, base_path, hw, None if accelerator.distributed_type.value == "FSDP" else
                               accelerator.device, tokenizer, chat)
    if cold:
        say(f"Tokens de la plantilla que el modelo base nunca entrenó: {', '.join(tokenizer.convert_ids_to_tokens(cold))}; "
            f"empiezan con la media de los embeddings y se entrenan ({'sus filas, con PEFT' if recipe.method == 'lora' else 'con el resto'})")
    say(f"Plantilla de chat: {chat.name}{f' (como {chat.family})' if chat.family and chat.family != chat.name else ''}; "
        f"fin de turno {chat.end_of_turn!r}" + (f", fecha fija {chat.date_string}" if chat.date_string else ""))
    head = output_head(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    method = "Ajuste completo" if recipe.method == "full" else "DoRA" if recipe.lora.use_dora else "LoRA"
    say(f"{method}: {trainable:,} parámetros entrenables de {total:,} ({100 * trainable / total:.2f} %)")

    # --- stage 3: optimizer and schedule ----------------------------------------------------------------------------
    steps_per_epoch = prepared.steps_per_epoch(cfg.grad_accum, processes)
    total_steps = prepared.total_steps(cfg, processes)
    raw_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
    optimizer = raw_optimizer
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed clips inside its engine: give it the recipe's norm
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm or 0
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare: FSDP2 replaces the parameters

    def reduce_sums(total: float, count: int) -> tuple[float, int]:
        sums = accelerator.reduce(torch.tensor([total, float(count)], device=accelerator.device), "sum")
        return float(sums[0]), int(sums[1])

    def validation_loss() -> float | None:
        batches = (collated(data.val, val_plan[i]) for i in shard_for_eval(len(val_plan), rank, processes))
        return held_out_loss(model, batches, head, accelerator.autocast, reduce=reduce_sums) if val_plan else None

    def calibrate() -> dict:
        """Real steps, measured. Memory: forward + backward of the epoch's largest micro-batch (the one that sets
        the peak), twice (the first warms allocators and kernels up), and the process's peak over them. Time: a
        typical micro-batch (the median by tokens) and the smallest, fitted as a + b·tokens per micro-batch
        (planning/timing.py), plus the optimizer's own step. Gradients and RNG put back, so the run is the one it
        would be without this. Sharded engines (FSDP, DeepSpeed) count their own backward calls: there, a no-grad
        forward × 3."""
        state = rng_state()
        by_tokens = sorted(stream.epoch_plan(0), key=lambda rows: sum(lengths[i] for i in examples_of(rows)))
        largest = prepared.largest_micro_batch()
        load_peak = reset_peak(accelerator.device.type)
        samples = []
        for rows in (largest, largest, by_tokens[len(by_tokens) // 2], by_tokens[0]):
            tokens = sum(lengths[i] for i in examples_of(rows))
            batch = collated(data.train, rows)
            t0 = time.time()
            if sharded:
                with torch.no_grad():
                    token_loss_sum(model, batch, head, accelerator.autocast)
            else:
                with accelerator.no_sync(model):
                    loss_sum, _ = token_loss_sum(model, batch, head, accelerator.autocast)
                    loss_sum.backward()
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            samples.append((tokens, (time.time() - t0) * (3 if sharded else 1)))
        peak = max(measured_peak(accelerator.device.type), load_peak)
        optimizer.zero_grad(set_to_none=True)
        set_rng_state(state)
        fit = fit_step_time(samples[2:], 0.0 if sharded else _optimizer_step_seconds(raw_optimizer, params))
        return {"fit": fit, "peak_bytes": peak}

    # --- stage 4: resume, or the time budget's plan ------------------------------------------------------------------
    start_step = 0
    recipe_text = dump_recipe(recipe)
    saved = last = None
    if resume:
        last = checkpoint_dirs(run_dir)[-1]
        saved = json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))
        saved_recipe = _saved_recipe(last, run_dir)
        changed = resume_conflicts(saved_recipe, yaml.safe_load(recipe_text), saved.get("processes"), processes)
        if changed and not force:
            raise AfinarError(
                "T006", "la receta cambió algo de lo que dependen el orden de los datos o el optimizador: "
                + ", ".join(changed), where=str(last),
                hint="vuelve a la receta del checkpoint, o añade --forzar para continuar igualmente (no será exacto)",
            )
        if changed:
            say(f"aviso: continuando con cambios ({', '.join(changed)}); no será idéntico a no haber parado")
        if cfg.max_minutes and saved.get("total_steps"):  # a budget run keeps the plan it made (and its schedule)
            total_steps = saved["total_steps"]
        elif saved.get("total_steps") not in (None, total_steps):
            say(f"aviso: la ejecución planeaba {saved['total_steps']} pasos y ahora son {total_steps} "
                "(cambiaron --max-steps, --epochs o --minutos); el calendario de la tasa de aprendizaje cambia")
    # The base's held-out loss (untrained; with LoRA, B starts at zero: exactly the base model), before anything is
    # written: its time goes into the budget's plan.
    base_loss, eval_seconds = None, 0.0
    if not resume and val_plan and not plan_only:
        t0 = time.time()
        base_loss = validation_loss()
        eval_seconds = time.time() - t0
    # The plan, measured: real steps of this recipe on this machine (also the time budget's estimate).
    plan = budget = None
    if not resume or cfg.max_minutes:
        try:
            calibration = calibrate()
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise _out_of_memory(check, run_dir, 1, calibrating=True) from exc
        plan = estimate(recipe, config, shape, target, calibration=calibration, runtime_bytes=runtime_bytes,
                        detailed=plan_only)
        say(plan.one_line())
        if plan_only:
            return plan
    if cfg.max_minutes and not resume:
        remaining = deadline - time.time()
        steps = plan_steps(remaining, plan.step_seconds, eval_seconds, cfg.eval_every, total_steps)
        budget = BudgetPlan(cfg.max_minutes * 60, remaining, plan.step_seconds, eval_seconds,
                            *broadcast_object_list([steps]), total_steps)
        if budget.steps < 1:
            raise AfinarError(
                "T012", f"el presupuesto de {cfg.max_minutes:g} min no alcanza ni para un paso en este equipo "
                f"(un paso ≈ {plan.step_seconds:.0f} s, y ya van {time.time() - started:.0f} s de carga y medida).",
                where="train.max_minutes", hint="sube --minutos, o baja data.max_length o train.batch_size",
            )
        total_steps = budget.steps
        say(budget.summary(("esta CPU" if hw.device == "cpu" else "esta GPU") + (f" × {processes} procesos" if processes > 1 else "")))
    # The scheduler is stepped once per optimizer step by us (accelerate's wrapper would step it once per process).
    scheduler = get_scheduler(
        cfg.scheduler, raw_optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    if resume:
        start_step = load_checkpoint(last, accelerator.unwrap_model(model), optimizer.optimizer, scheduler,
                                     accelerator.scaler, rank, accelerator)["step"]
        say(f"Continuando desde {last} (paso {start_step} de {total_steps})")
    if main:
        _prepare_run_dir(run_dir, resume)
        if resume:
            trim_metrics(run_dir, start_step)
        atomic_write_text(run_dir / RECIPE, recipe_text)
        if plan is not None:  # read back if the process dies of memory (cli.py) and beside afinar_run.json
            atomic_write_text(run_dir / PLAN, json.dumps(plan.to_json(), indent=2, ensure_ascii=False))
    accelerator.wait_for_everyone()
    if cfg.report_to != "none":
        flat = flatten(recipe.model_dump(mode="json"))
        accelerator.init_trackers(recipe.name, config={k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})

    def write_checkpoint(step: int) -> None:
        from accelerate.utils import gather_object

        states = gather_object([rng_state()])  # every process's RNG, so dropout resumes exactly on each
        adapter_state, engine_state = None, None
        if sharded:  # collective calls: every process takes part
            adapter_state = accelerator.get_state_dict(model)
            engine_state = run_dir / CHECKPOINTS / f".step-{step:06d}.{ENGINE_STATE}"
            accelerator.save_state(str(engine_state))
        if main:
            save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer.optimizer, scheduler, accelerator.scaler,
                            step, cfg.keep_last, states, {"processes": processes, "total_steps": total_steps},
                            recipe_text, adapter_state, engine_state)
        accelerator.wait_for_everyone()

    say(
        f"Datos: {len(data.train)} secuencias de entrenamiento, {len(data.val)} de validación ({_cache_note(data)}); "
        f"{total_steps} pasos ({'empaquetado' if cfg.packing else 'con relleno'}: hasta {cfg.batch_size} ejemplos y "
        f"{cfg.tokens_per_batch} tokens por micro-lote × acumulación {cfg.grad_accum} × {processes} proceso(s); "
        f"{steps_per_epoch} pasos por época)"
    )
    if base_loss is not None:
        if main:
            append_metrics(run_dir, {"step": 0, "eval_loss": base_loss, "eval_ppl": perplexity(base_loss)})
        say(f"Pérdida de validación inicial (modelo base): {base_loss:.4f}")

    # --- stage 5: the loop --------------------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc="Entrenando", unit="paso",
               disable=not (progress and main), dynamic_ncols=True)
    loss_value = eval_loss = float("nan")
    counted = {"real_tokens": 0, "trained_tokens": 0, "examples": 0, "seconds": 0.0}
    first_step_at, first_seconds = None, 0.0
    done = start_step
    stopped = False
    try:
        for step in range(start_step + 1, total_steps + 1):
            t0 = time.time()
            micro = [(epoch, rows, collated(data.train, rows)) for epoch, rows in stream.step(step, cfg.grad_accum, rank, processes)]
            # Token-weighted: each micro-batch's summed loss over the step's labelled tokens on all processes, so
            # accumulation and processes add up to one large batch. DDP averages gradients over processes and
            # accelerator.backward divides by grad_accum: both are undone by the factor below.
            # One all-reduce for the step's labelled tokens, real (unpadded) tokens, examples, whether any process
            # is out of time (the budget), and whether a stop was requested (the main process looks for the file):
            # every process must stop at the same step.
            late = False
            if deadline is not None:
                timed = done - start_step - 1  # the first step of a process is slower; leave it out once there are more
                expected = (counted["seconds"] - first_seconds) / timed if timed > 0 else (budget.step_s if budget else 0.0)
                late = out_of_time(time.time(), deadline, expected, eval_seconds * (2 if step % cfg.eval_every == 0 else 1))
            local = [sum(int((b["labels"][:, 1:] != IGNORE).sum()) for _, _, b in micro),
                     sum(lengths[i] for _, mb, _ in micro for i in examples_of(mb)),
                     sum(len(examples_of(mb)) for _, mb, _ in micro), int(late), int(main and stop_file.exists())]
            n_step, real, examples, late, stop = (int(x) for x in accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum"))
            if stop:
                stopped = True
                break
            if late:
                break
            scale = cfg.grad_accum * processes / max(n_step, 1)
            step_sum = 0.0
            for _, _, batch in micro:  # batch: input_ids/labels (B, W) + position_ids (packed) or attention_mask
                with accelerator.accumulate(model):
                    loss_sum, _ = token_loss_sum(model, batch, head, accelerator.autocast)
                    accelerator.backward(loss_sum * scale)
                    step_sum += float(loss_sum.detach())
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step_sum, _ = reduce_sums(step_sum, 0)
            loss_value = step_sum / max(n_step, 1)
            elapsed = time.time() - t0
            counted["real_tokens"] += real
            counted["trained_tokens"] += n_step
            counted["examples"] += examples
            counted["seconds"] += elapsed
            if first_step_at is None:
                first_step_at, first_seconds = time.time(), elapsed
            done = step

            record = {
                "step": step,
                "epoch": round(micro[-1][0] + 1e-9, 4),
                "loss": loss_value,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": real / max(elapsed, 1e-9),
                "real_tokens": real,
                "examples": examples,
                "step_seconds": round(elapsed, 4),
            }
            if step % cfg.eval_every == 0 or step == total_steps:
                measured = validation_loss()
                if measured is not None:
                    eval_loss = measured
                    record.update(eval_loss=eval_loss, eval_ppl=perplexity(eval_loss))
            if main and (step % cfg.log_every == 0 or "eval_loss" in record):
                append_metrics(run_dir, record)
            if cfg.report_to != "none":
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            if step % cfg.save_every == 0 and step != total_steps:
                write_checkpoint(step)
            bar.set_postfix(loss=f"{loss_value:.3f}", eval=f"{eval_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        bar.close()
        raise _out_of_memory(plan or check, run_dir, done + 1) from exc
    bar.close()

    # A stop request, or the time budget ran out before the plan (a slower machine than measured): end here, with
    # the held-out loss of the last step.
    if done < total_steps:
        if not stopped:
            say(f"Se acaba el presupuesto de {cfg.max_minutes:g} min: fin en el paso {done} de {total_steps} planeados.")
        if done > start_step and done % cfg.eval_every != 0:
            measured = validation_loss()
            if measured is not None:
                eval_loss = measured
                if main:
                    append_metrics(run_dir, {"step": done, "eval_loss": eval_loss, "eval_ppl": perplexity(eval_loss)})

    # --- stage 6: artifacts -------------------------------------------------------------------------------------------
    write_checkpoint(done)
    if cfg.report_to != "none":
        accelerator.end_training()
    if main:
        _write_artifacts(run_dir, accelerator.unwrap_model(model), tokenizer, data, recipe, hw, accelerator, chat, {
            "base_path": base_path,
            "chat_template": {**chat.record(), "trained_tokens": tokenizer.convert_ids_to_tokens(cold)},
            "steps": done,
            "planned_steps": total_steps,
            "stopped": stopped,  # by a stop request: --resume continues to planned_steps
            "train_seconds": round(time.time() - started, 1),
            "budget": None if not cfg.max_minutes else {
                "minutes": cfg.max_minutes, "planned_steps": total_steps, "steps": done,
                "step_seconds_planned": budget.step_s if budget else None, "eval_seconds": eval_seconds,
                "seconds": round(time.time() - started, 1)},
            "final_train_loss": loss_value,
            "final_eval_loss": eval_loss if not math.isnan(eval_loss) else None,
            "time_to_first_step_s": round((first_step_at or time.time()) - started, 2),
            # Plan and reality side by side: the predicted peak and step, the measured ones.
            "plan": None if plan is None else {
                "memory_gb": round(plan.memory.total / 2**30, 3), "step_seconds": round(plan.step_seconds, 4),
                "formula_memory_gb": round(plan.memory.measured.get("formula_bytes", plan.memory.total) / 2**30, 3)},
            "memory_peak_gb": round(measured_peak(accelerator.device.type) / 2**30, 3),
            "throughput": {**counted, "seconds": round(counted["seconds"], 3),
                           "tokens_per_s": counted["real_tokens"] / max(counted["seconds"], 1e-9),
                           "examples_per_s": counted["examples"] / max(counted["seconds"], 1e-9)},
        })
        if stopped:
            command = f"afinar train {recipe_path if recipe_path else 'RECETA'} --resume"
            same = " (con las mismas opciones)" if any(v is not None for v in (overrides or {}).values()) else ""
            kept = "el modelo" if recipe.method == "full" else "el adaptador"
            say(f"Detenido a petición en el paso {done} de {total_steps}: {kept} y un checkpoint quedan guardados; "
                f"continúa con: {command}{same}")
        else:
            took = f" (presupuesto {cfg.max_minutes:g} min, {done} pasos)" if cfg.max_minutes else ""
            say(f"Listo en {time.time() - started:.0f} s{took}. Adaptador, tokenizador, receta y métricas en {run_dir}")
        # Removed once everything is saved: the studio can take its disappearance as "saved". A request that came
        # during the last step is consumed too (the run ended anyway).
        stop_file.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return run_dir


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out of memory, or a CPU allocation the system refused (torch's DefaultCPUAllocator, Python's own)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or "can't allocate memory" in text or "out of memory" in text.lower())


def _out_of_memory(plan, run_dir: Path, step: int, calibrating: bool = False) -> AfinarError:
    """The plan's own explanation of an out-of-memory and what to change, instead of a traceback."""
    kept = checkpoint_dirs(run_dir) if not calibrating else []
    where = "al medir los primeros pasos (antes de escribir nada)" if calibrating else f"en el paso {step}"
    explained = plan.explain_out_of_memory() if plan is not None else ""
    resume = (f"la ejecución conserva su último checkpoint ({kept[-1].name}): tras el cambio, continúa con "
              "--resume --forzar" if kept else "no había checkpoint todavía: vuelve a empezar tras el cambio")
    return AfinarError(
        "T016", f"sin memoria {where}. {explained}", where=str(run_dir),
        hint=f"{plan.suggestion_text() if plan is not None else 'baja train.tokens_per_batch'}; {resume}",
    )


def _write_artifacts(run_dir: Path, model, tokenizer, data, recipe: Recipe, hw, accelerator, chat, info: dict) -> None:
    with atomic_dir(run_dir / ".final", overwrite=True) as tmp:
        if recipe.method == "full":
            save_full_model(model, tmp, tokenizer, chat.eos_token_ids)
        else:
            model.save_pretrained(tmp)
            # The run's stop tokens for whatever loads it next (merge, chat, eval, export): the end of turn first.
            base = model.get_base_model()
            set_turn_end(base, tokenizer, chat.eos_token_ids)
            base.generation_config.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    for item in (run_dir / ".final").iterdir():
        os.replace(item, run_dir / item.name)
    shutil.rmtree(run_dir / ".final", ignore_errors=True)
    atomic_write_text(run_dir / DATA_FINGERPRINT, json.dumps(data.fingerprint, indent=2, ensure_ascii=False))
    plot_losses(run_dir)
    info = {
        "base": recipe.model.base,
        "method": recipe.method,
        "hardware": {"device": hw.device, "precision": hw.precision, "reason": hw.reason},
        "processes": accelerator.num_processes,
        "distributed": accelerator.distributed_type.value,
        "data_cache": data.cache,
        **info,
        "versions": _versions(),
    }
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2, ensure_ascii=False))


def _saved_recipe(checkpoint: Path, run_dir: Path) -> dict:
    import yaml

    path = checkpoint / RECIPE if (checkpoint / RECIPE).is_file() else run_dir / RECIPE
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _cache_note(data) -> str:
    return "tokenizado reutilizado de la caché" if data.cache == "hit" else f"tokenizado y guardado en {data.folder}"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("afinar", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
