"""The stages `afinar train` composes (train.py reads them top to bottom, with the loop inline).

launch (recipe, checks, accelerate) → load_data (tokenized cache, micro-batch plan) → check_memory (the plan, before
any weight is read) → build_model → Session (optimizer; the collation, held-out loss, calibration and checkpoints
the loop uses; resume, the measured plan, the time budget and the schedule) → StepClock (throughput and the budget's
"one more step?") → finish (last checkpoint and the run folder's artifacts). Reusable pieces that are not stages
(checkpoints, RNG, the loss, metrics) live in afinar/training.py, the order of micro-batches in data/batching.py.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from afinar import hardware, heap, ollama_store, supervise
from afinar.atomic import atomic_dir, atomic_write_text
from afinar.attention import packed_attention_active
from afinar.budget import BudgetPlan, out_of_time, plan_steps
from afinar.config import Recipe, apply_overrides, dump_recipe, load_recipe
from afinar.data.batching import examples_of, shard_for_eval
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
from afinar.models import load_config, load_model, resolve_base, save_tokenizer
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
    MIN_SHARED_PREFIX,
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


# --- stage 0: recipe and launch checks (nothing is written before these pass) -------------------------------------


@dataclass
class Launch:
    """The resolved recipe and where it runs: the accelerator (processes, device) and the run folder."""

    recipe: Recipe
    recipe_path: str | None  # for the --resume hint; None when train() got a Recipe object
    overrides: dict
    run_dir: Path
    hw: hardware.Hardware
    accelerator: object  # accelerate.Accelerator
    started: float
    deadline: float | None  # the time budget's end (train.max_minutes), counted from train()'s start

    @property
    def cfg(self):
        return self.recipe.train

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def sharded(self) -> bool:
        return self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")

    @property
    def stop_file(self) -> Path:
        return self.run_dir / STOP_REQUEST

    def say(self, *args, **kwargs) -> None:
        """print, on the main process only."""
        if self.main:
            print(*args, **kwargs)


def launch(recipe: str | Path | Recipe, overrides: dict | None, resume: bool, overwrite: bool, plan_only: bool) -> Launch:
    started = time.time()
    recipe_path = None if isinstance(recipe, Recipe) else str(recipe)
    recipe = apply_overrides(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), overrides or {})
    cfg = recipe.train
    run_dir = recipe.run_dir()
    if not plan_only:
        check_run_dir(run_dir, resume, overwrite)
    if cfg.max_minutes and cfg.max_steps:
        raise AfinarError(
            "T011", "un presupuesto de tiempo (--minutos / train.max_minutes) y un número fijo de pasos "
            "(--max-steps / train.max_steps) no van juntos: el presupuesto decide los pasos.",
            where="train.max_steps", hint="quita uno de los dos",
        )
    hw = hardware.detect(cfg.precision, recipe.model.quantization)
    check_launch(hw, cfg)
    run = Launch(recipe, recipe_path, overrides or {}, run_dir, hw, make_accelerator(hw, cfg, run_dir), started,
                 started + cfg.max_minutes * 60 if cfg.max_minutes else None)
    if run.main and not plan_only:  # a leftover request (a crash before it was removed) must not stop this run at once
        run.stop_file.unlink(missing_ok=True)
    seed_everything(cfg.seed)
    where = f"{run.processes} procesos ({run.accelerator.distributed_type.value})" if run.processes > 1 else hw.device
    run.say(f"Hardware: {where}, precisión {hw.precision} — {hw.reason}")
    return run


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
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


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        remove_partial_checkpoints(run_dir)
        shutil.rmtree(run_dir / ".final", ignore_errors=True)
    elif run_dir.exists():
        for entry in run_dir.iterdir():
            # A stop request here was made during loading (the stale one went at the start): it must still stop.
            if entry.name not in (DATA_REPORT_DIR, STOP_REQUEST):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def check_launch(hw, cfg) -> None:
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


def make_accelerator(hw, cfg, run_dir: Path):
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


# --- stage 1: data, and the plan's memory check before any weight is read -----------------------------------------


@dataclass
class Data:
    base_path: str
    tokenizer: object
    chat: object  # data.chat_format.ChatFormat: the template, its end of turn and stop tokens
    prepared: object  # data.pipeline.TrainingData: the tokenized splits, lengths, micro-batch stream, held-out plan
    config: object  # the base's transformers config (the plan's formula)
    shape: DataShape
    runtime_bytes: int  # PyTorch, transformers, the data and tokenizer: everything but the model


def load_data(run: Launch, progress: bool) -> Data:
    recipe = run.recipe
    with run.accelerator.main_process_first():  # the main process converts/tokenizes; the others read its cache
        base_path = resolve_base(recipe.model.base, download=True)
        if ollama_store.is_ollama_spec(recipe.model.base) and run.main:  # Ollama's Go template vs the GGUF's
            check_ollama_template(ollama_store.find_model(recipe.model.base), base_path)
        tokenizer, chat = recipe_tokenizer(base_path, recipe.data.template)
        check_turns_closed(tokenizer)  # M013 before any data is read: the end of turn is trained after every answer
        prepared = prepare_training_data(recipe, tokenizer, progress=progress and run.main, say=run.say)
    return Data(base_path, tokenizer, chat, prepared, load_config(base_path),
                DataShape.of(prepared, recipe, run.processes), process_rss())


def compact_heap(run: Launch, check) -> bool:
    """The process's allocator on a CPU (afinar/heap.py), said, before the weights are read; with glibc's,
    train.compact_heap. auto: when the plan's formula says the run fills this machine's memory; with --resume (no
    formula run) only when asked."""
    if run.hw.device != "cpu":
        return False
    allocator = heap.active_allocator()
    if allocator in heap.ALLOCATOR_NAMES:
        run.say(f"Memoria: asignador {allocator} (menos pico que el de glibc a la misma velocidad; afinar/heap.py)")
        return False
    wanted = run.cfg.compact_heap
    if wanted == "auto":
        wanted = check is not None and check.memory.verdict != "cabe"
    if not wanted:
        if allocator == "glibc" and os.environ.get(supervise.SUPERVISED):  # `afinar train` looked for one, in vain
            run.say(f"Memoria: asignador de glibc; con tcmalloc el pico bajaría sin perder velocidad "
                    f"({heap.INSTALL_HINT})")
        return False
    done = heap.return_freed_memory()
    run.say("Memoria: los tensores liberados vuelven al sistema (train.compact_heap: menos pico, pasos más lentos; "
            f"con tcmalloc, menos pico sin perder velocidad: {heap.INSTALL_HINT})"
            if done else "aviso: train.compact_heap solo actúa en Linux con glibc; aquí no cambia nada")
    return done


def check_memory(run: Launch, data: Data, force: bool):
    """The plan's formula (no step measured yet): refuse a run that would not fit (T015) unless `force`."""
    check = estimate(run.recipe, data.config, data.shape, resolve_target("local", run.recipe), measure_time=False,
                     runtime_bytes=data.runtime_bytes, detailed=False)
    if check.memory.verdict == "no cabe" and not force:
        raise AfinarError(
            "T015", "según el plan, esta ejecución no cabe en la memoria de este equipo; "
            + check.explain_out_of_memory(), where="train",
            hint=f"prueba: {check.suggestion_text()}; o añade --forzar para intentarlo igualmente "
                 f"(detalle: afinar plan RECETA)",
        )
    return check


# --- stage 2: model -----------------------------------------------------------------------------------------------


def build_model(run: Launch, data: Data):
    """(model ready to train, ids of the template's tokens the base never trained), and what it is, said."""
    recipe, tokenizer, chat = run.recipe, data.tokenizer, data.chat
    # FSDP places (and may shard or lazily load) the weights itself in prepare().
    device = None if run.accelerator.distributed_type.value == "FSDP" else run.accelerator.device
    model, cold = model_for_training(recipe, data.base_path, run.hw, device, tokenizer, chat)
    if cold:
        run.say(f"Tokens de la plantilla que el modelo base nunca entrenó: "
                f"{', '.join(tokenizer.convert_ids_to_tokens(cold))}; empiezan con la media de los embeddings y se "
                f"entrenan ({'sus filas, con PEFT' if recipe.method == 'lora' else 'con el resto'})")
    family = f" (como {chat.family})" if chat.family and chat.family != chat.name else ""
    run.say(f"Plantilla de chat: {chat.name}{family}; fin de turno {chat.end_of_turn!r}"
            + (f", fecha fija {chat.date_string}" if chat.date_string else ""))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    method = "Ajuste completo" if recipe.method == "full" else "DoRA" if recipe.lora.use_dora else "LoRA"
    run.say(f"{method}: {trainable:,} parámetros entrenables de {total:,} ({100 * trainable / total:.2f} %)")
    return model, cold


def model_for_training(recipe: Recipe, base_path: str, hw, device, tokenizer, chat):
    """(model ready to train, ids of the template's tokens the base never trained: warmed up and trained too)."""
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
        (model if recipe.method == "full" else model.get_base_model()).model.compile(dynamic=True)
    return model, cold


# --- stages 3 and 4: optimizer, resume, the measured plan, the schedule -------------------------------------------


class Session:
    """What the loop works with once the model is built: the prepared model and optimizer, the schedule, the step
    to start from, and the operations it calls (a step's micro-batches and counts, the held-out loss, checkpoints).
    Built in order: Session(...) → check_resume() (with --resume) → measure() → open()."""

    def __init__(self, run: Launch, data: Data, model, cold: list[int]):
        import torch

        cfg = run.cfg
        self.run, self.data, self.cold = run, data, cold
        self.prepared, self.tokenizer, self.accelerator = data.prepared, data.tokenizer, run.accelerator
        self.head = output_head(model)
        self.raw_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                               weight_decay=cfg.weight_decay)
        if self.accelerator.state.deepspeed_plugin is not None:  # DeepSpeed clips in its engine: the recipe's norm
            self.accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm or 0
        self.model, self.optimizer = self.accelerator.prepare(model, self.raw_optimizer)
        self.shared_prefix = self._shared_prefix()
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # after prepare: FSDP2 replaces them
        self.steps_per_epoch = self.prepared.steps_per_epoch(cfg.grad_accum, run.processes)
        self.total_steps = self.prepared.total_steps(cfg, run.processes)
        self.recipe_text = dump_recipe(run.recipe)
        self.start_step, self.last, self.scheduler = 0, None, None
        self.plan = self.budget = None
        self.base_loss, self.eval_seconds = None, 0.0

    def _shared_prefix(self) -> int:
        """Tokens a packed row holds once for all its examples (collate_packed(prefix=...)): only when the prepared
        model runs afinar's per-example attention, the one that reads such rows, without a sliding window shorter
        than a row (the mask path would let the examples see each other)."""
        shared = self.prepared.shared_prefix if self.run.cfg.packing and self.run.cfg.shared_prefix else 0
        window = getattr(getattr(self.model, "config", None), "sliding_window", None)
        if (shared < MIN_SHARED_PREFIX or not packed_attention_active(self.model)
                or (window and window < self.prepared.row_tokens)):
            return 0
        self.run.say(f"Los {shared} tokens con que empiezan todos los ejemplos (prompt de sistema y apertura de la "
                     f"plantilla) se calculan una vez por fila empaquetada, no una por ejemplo: mismos gradientes")
        return shared

    # -- what the loop calls --

    def collated(self, dataset, micro_batch: list[list[int]]) -> dict:
        flat = examples_of(micro_batch)
        columns = dataset[flat]  # reads only these rows from the memory-mapped Arrow file, in this order
        examples = iter({"input_ids": i, "labels": lab} for i, lab in zip(columns["input_ids"], columns["labels"]))
        rows = [[next(examples) for _ in row] for row in micro_batch]
        pad = self.tokenizer.pad_token_id
        batch = (collate_packed(rows, pad, self.shared_prefix) if self.run.cfg.packing
                 else collate([example for row in rows for example in row], pad))
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def micro_batches(self, step: int) -> list[tuple[float, list, dict]]:
        """This process's share of optimizer step `step`: (epoch, rows, batch) per micro-batch."""
        run = self.run
        return [(epoch, rows, self.collated(self.prepared.data.train, rows)) for epoch, rows in
                self.prepared.stream.step(step, run.cfg.grad_accum, self.accelerator.process_index, run.processes)]

    def step_counts(self, micro: list, late: bool) -> tuple[int, int, int, bool, bool]:
        """One all-reduce for the step's labelled tokens, real (unpadded) tokens and examples on all processes, and
        whether any process is out of time (the budget) or a stop was requested (the main process looks for the
        file): every process must stop at the same step."""
        import torch

        lengths = self.prepared.lengths
        local = [sum(int((b["labels"][:, 1:] != IGNORE).sum()) for _, _, b in micro),
                 sum(lengths[i] for _, mb, _ in micro for i in examples_of(mb)),
                 sum(len(examples_of(mb)) for _, mb, _ in micro), int(late),
                 int(self.run.main and self.run.stop_file.exists())]
        summed = self.accelerator.reduce(torch.tensor(local, device=self.accelerator.device), "sum")
        n_step, real, examples, late, stop = (int(x) for x in summed)
        return n_step, real, examples, bool(late), bool(stop)

    def reduce_sums(self, total: float, count: int) -> tuple[float, int]:
        import torch

        sums = self.accelerator.reduce(torch.tensor([total, float(count)], device=self.accelerator.device), "sum")
        return float(sums[0]), int(sums[1])

    def validation_loss(self) -> float | None:
        val_plan, processes = self.prepared.val_plan, self.run.processes
        rank = self.accelerator.process_index
        batches = (self.collated(self.prepared.data.val, val_plan[i]) for i in shard_for_eval(len(val_plan), rank, processes))
        return (held_out_loss(self.model, batches, self.head, self.accelerator.autocast, reduce=self.reduce_sums)
                if val_plan else None)

    def log(self, step: int, record: dict) -> None:
        """The metrics file (every log_every steps, and every held-out loss) and the recipe's tracker."""
        cfg = self.run.cfg
        if self.run.main and (step % cfg.log_every == 0 or "eval_loss" in record):
            append_metrics(self.run.run_dir, record)
        if cfg.report_to != "none":
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def write_checkpoint(self, step: int) -> None:
        from accelerate.utils import gather_object

        run, accelerator = self.run, self.accelerator
        states = gather_object([rng_state()])  # every process's RNG, so dropout resumes exactly on each
        adapter_state, engine_state = None, None
        if run.sharded:  # collective calls: every process takes part
            adapter_state = accelerator.get_state_dict(self.model)
            engine_state = run.run_dir / CHECKPOINTS / f".step-{step:06d}.{ENGINE_STATE}"
            accelerator.save_state(str(engine_state))
        if run.main:
            save_checkpoint(run.run_dir, accelerator.unwrap_model(self.model), self.optimizer.optimizer, self.scheduler,
                            accelerator.scaler, step, run.cfg.keep_last, states,
                            {"processes": run.processes, "total_steps": self.total_steps}, self.recipe_text,
                            adapter_state, engine_state)
        accelerator.wait_for_everyone()

    # -- stage 4: resume, or the measured plan and the time budget; then the schedule and the run folder --

    def check_resume(self, force: bool) -> None:
        """--resume: the last complete checkpoint, refused (T006) when the recipe changed what the data order or the
        optimizer depend on, unless `force`; a budget run keeps the plan it made."""
        import yaml

        run = self.run
        self.last = checkpoint_dirs(run.run_dir)[-1]
        saved = json.loads((self.last / "trainer_state.json").read_text(encoding="utf-8"))
        changed = resume_conflicts(saved_recipe(self.last, run.run_dir), yaml.safe_load(self.recipe_text),
                                   saved.get("processes"), run.processes)
        if changed and not force:
            raise AfinarError(
                "T006", "la receta cambió algo de lo que dependen el orden de los datos o el optimizador: "
                + ", ".join(changed), where=str(self.last),
                hint="vuelve a la receta del checkpoint, o añade --forzar para continuar igualmente (no será exacto)",
            )
        if changed:
            run.say(f"aviso: continuando con cambios ({', '.join(changed)}); no será idéntico a no haber parado")
        if run.cfg.max_minutes and saved.get("total_steps"):  # a budget run keeps the plan it made (and its schedule)
            self.total_steps = saved["total_steps"]
        elif saved.get("total_steps") not in (None, self.total_steps):
            run.say(f"aviso: la ejecución planeaba {saved['total_steps']} pasos y ahora son {self.total_steps} "
                    "(cambiaron --max-steps, --epochs o --minutos); el calendario de la tasa de aprendizaje cambia")

    def measure(self, check, resume: bool, plan_only: bool):
        """The base's held-out loss, then real steps of this recipe on this machine: the plan (also the time
        budget's estimate), and the number of steps the budget allows. Returns the measured plan, or None."""
        run = self.run
        # The base's held-out loss (untrained; with LoRA, B starts at zero: exactly the base model), before anything
        # is written: its time goes into the budget's plan.
        if not resume and self.prepared.val_plan and not plan_only:
            t0 = time.time()
            self.base_loss = self.validation_loss()
            self.eval_seconds = time.time() - t0
        if not resume or run.cfg.max_minutes:
            try:
                calibration = self.calibrate()
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise out_of_memory_error(check, run.run_dir, 1, calibrating=True) from exc
            self.plan = estimate(run.recipe, self.data.config, self.data.shape, resolve_target("local", run.recipe),
                                 calibration=calibration, runtime_bytes=self.data.runtime_bytes, detailed=plan_only)
            run.say(self.plan.one_line())
        if run.cfg.max_minutes and not resume and not plan_only:
            self._fit_budget()
        return self.plan

    def _fit_budget(self) -> None:
        from accelerate.utils import broadcast_object_list

        run, cfg = self.run, self.run.cfg
        remaining = run.deadline - time.time()
        steps = plan_steps(remaining, self.plan.step_seconds, self.eval_seconds, cfg.eval_every, self.total_steps)
        self.budget = BudgetPlan(cfg.max_minutes * 60, remaining, self.plan.step_seconds, self.eval_seconds,
                                 *broadcast_object_list([steps]), self.total_steps)
        if self.budget.steps < 1:
            raise AfinarError(
                "T012", f"el presupuesto de {cfg.max_minutes:g} min no alcanza ni para un paso en este equipo "
                f"(un paso ≈ {self.plan.step_seconds:.0f} s, y ya van {time.time() - run.started:.0f} s de carga y "
                "medida).", where="train.max_minutes", hint="sube --minutos, o baja data.max_length o train.batch_size",
            )
        self.total_steps = self.budget.steps
        device = ("esta CPU" if run.hw.device == "cpu" else "esta GPU") + (
            f" × {run.processes} procesos" if run.processes > 1 else "")
        run.say(self.budget.summary(device))

    def calibrate(self) -> dict:
        """Real steps, measured. Memory: forward + backward of the epoch's largest micro-batch (the one that sets
        the peak), twice (the first warms allocators and kernels up), and the process's peak over them. Time: a
        typical micro-batch (the median by tokens) and the smallest, fitted as a + b·tokens per micro-batch
        (planning/timing.py), plus the optimizer's own step. Gradients and RNG put back, so the run is the one it
        would be without this. Sharded engines (FSDP, DeepSpeed) count their own backward calls: there, a no-grad
        forward × 3."""
        import torch

        accelerator, sharded, lengths = self.accelerator, self.run.sharded, self.prepared.lengths
        state = rng_state()
        by_tokens = sorted(self.prepared.stream.epoch_plan(0), key=lambda rows: sum(lengths[i] for i in examples_of(rows)))
        largest = self.prepared.largest_micro_batch()
        load_peak = reset_peak(accelerator.device.type)
        samples = []
        for rows in (largest, largest, by_tokens[len(by_tokens) // 2], by_tokens[0]):
            tokens = sum(lengths[i] for i in examples_of(rows))
            batch = self.collated(self.prepared.data.train, rows)
            t0 = time.time()
            if sharded:
                with torch.no_grad():
                    token_loss_sum(self.model, batch, self.head, accelerator.autocast)
            else:
                with accelerator.no_sync(self.model):
                    loss_sum, _ = token_loss_sum(self.model, batch, self.head, accelerator.autocast)
                    loss_sum.backward()
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            samples.append((tokens, (time.time() - t0) * (3 if sharded else 1)))
        peak = max(measured_peak(accelerator.device.type), load_peak)
        self.optimizer.zero_grad(set_to_none=True)
        set_rng_state(state)
        fit = fit_step_time(samples[2:], 0.0 if sharded else optimizer_step_seconds(self.raw_optimizer, self.params))
        return {"fit": fit, "peak_bytes": peak}

    def open(self, resume: bool) -> None:
        """The schedule, the checkpoint's state (--resume), the run folder (recipe, plan), trackers; and what the
        run is about to do, said once."""
        from transformers import get_scheduler

        run, cfg, accelerator = self.run, self.run.cfg, self.accelerator
        # Stepped once per optimizer step by the loop (accelerate's wrapper would step it once per process).
        self.scheduler = get_scheduler(cfg.scheduler, self.raw_optimizer, num_training_steps=self.total_steps,
                                       num_warmup_steps=round(cfg.warmup_ratio * self.total_steps))
        if resume:
            self.start_step = load_checkpoint(self.last, accelerator.unwrap_model(self.model), self.optimizer.optimizer,
                                              self.scheduler, accelerator.scaler, accelerator.process_index,
                                              accelerator)["step"]
            run.say(f"Continuando desde {self.last} (paso {self.start_step} de {self.total_steps})")
        if run.main:
            prepare_run_dir(run.run_dir, resume)
            if resume:
                trim_metrics(run.run_dir, self.start_step)
            atomic_write_text(run.run_dir / RECIPE, self.recipe_text)
            if self.plan is not None:  # read back if the process dies of memory (supervise.py) and beside afinar_run.json
                atomic_write_text(run.run_dir / PLAN, json.dumps(self.plan.to_json(), indent=2, ensure_ascii=False))
        accelerator.wait_for_everyone()
        if cfg.report_to != "none":
            flat = flatten(run.recipe.model_dump(mode="json"))
            accelerator.init_trackers(run.recipe.name,
                                      config={k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})
        data = self.prepared.data
        run.say(
            f"Datos: {len(data.train)} secuencias de entrenamiento, {len(data.val)} de validación ({cache_note(data)}); "
            f"{self.total_steps} pasos ({'empaquetado' if cfg.packing else 'con relleno'}: hasta {cfg.batch_size} "
            f"ejemplos y {cfg.tokens_per_batch} tokens por micro-lote × acumulación {cfg.grad_accum} × "
            f"{run.processes} proceso(s); {self.steps_per_epoch} pasos por época)"
        )
        if self.base_loss is not None:
            if run.main:
                append_metrics(run.run_dir, {"step": 0, "eval_loss": self.base_loss, "eval_ppl": perplexity(self.base_loss)})
            run.say(f"Pérdida de validación inicial (modelo base): {self.base_loss:.4f}")


def optimizer_step_seconds(optimizer, params: list) -> float:
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


# --- stage 5: the loop's clock ------------------------------------------------------------------------------------


@dataclass
class StepClock:
    """Throughput counters of the loop, and the time budget's question before each step: is there time for one more
    step, the held-out loss it may bring, the final evaluation and the artifacts?"""

    deadline: float | None
    planned_step_s: float  # the budget's estimate, until real steps say better
    eval_seconds: float
    eval_every: int
    counted: dict = field(default_factory=lambda: {"real_tokens": 0, "trained_tokens": 0, "examples": 0, "seconds": 0.0})
    steps: int = 0
    first_step_at: float | None = None
    first_seconds: float = 0.0

    def late(self, step: int) -> bool:
        if self.deadline is None:
            return False
        timed = self.steps - 1  # the first step of a process is slower; leave it out once there are more
        expected = (self.counted["seconds"] - self.first_seconds) / timed if timed > 0 else self.planned_step_s
        return out_of_time(time.time(), self.deadline, expected,
                           self.eval_seconds * (2 if step % self.eval_every == 0 else 1))

    def count(self, started: float, real: int, trained: int, examples: int) -> float:
        """A step that began at `started` ended now: add it up; returns its seconds."""
        elapsed = time.time() - started
        for key, value in (("real_tokens", real), ("trained_tokens", trained), ("examples", examples),
                           ("seconds", elapsed)):
            self.counted[key] += value
        if self.first_step_at is None:
            self.first_step_at, self.first_seconds = time.time(), elapsed
        self.steps += 1
        return elapsed

    def throughput(self) -> dict:
        seconds = max(self.counted["seconds"], 1e-9)
        return {**self.counted, "seconds": round(self.counted["seconds"], 3),
                "tokens_per_s": self.counted["real_tokens"] / seconds, "examples_per_s": self.counted["examples"] / seconds}


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out of memory, or a CPU allocation the system refused (torch's DefaultCPUAllocator, Python's own)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or "can't allocate memory" in text or "out of memory" in text.lower())


def out_of_memory_error(plan, run_dir: Path, step: int, calibrating: bool = False) -> AfinarError:
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


# --- stage 6: artifacts -------------------------------------------------------------------------------------------


def finish(session: Session, clock: StepClock, done: int, stopped: bool, loss_value: float, eval_loss: float) -> None:
    """The last checkpoint, then (main process) the adapter or model, tokenizer, fingerprint, plot and
    afinar_run.json, and the closing line. Called on every process (the checkpoint is collective)."""
    run, cfg, tokenizer = session.run, session.run.cfg, session.tokenizer
    session.write_checkpoint(done)
    if cfg.report_to != "none":
        session.accelerator.end_training()
    if run.main:
        plan, budget, total_steps = session.plan, session.budget, session.total_steps
        write_artifacts(run, session.accelerator.unwrap_model(session.model), tokenizer, session.prepared.data,
                        session.data.chat, {
            "base_path": session.data.base_path,
            "chat_template": {**session.data.chat.record(), "trained_tokens": tokenizer.convert_ids_to_tokens(session.cold)},
            "steps": done,
            "planned_steps": total_steps,
            "stopped": stopped,  # by a stop request: --resume continues to planned_steps
            "train_seconds": round(time.time() - run.started, 1),
            "budget": None if not cfg.max_minutes else {
                "minutes": cfg.max_minutes, "planned_steps": total_steps, "steps": done,
                "step_seconds_planned": budget.step_s if budget else None, "eval_seconds": session.eval_seconds,
                "seconds": round(time.time() - run.started, 1)},
            "final_train_loss": loss_value,
            "final_eval_loss": eval_loss if not math.isnan(eval_loss) else None,
            "time_to_first_step_s": round((clock.first_step_at or time.time()) - run.started, 2),
            # Plan and reality side by side: the predicted peak and step, the measured ones.
            "plan": None if plan is None else {
                "memory_gb": round(plan.memory.total / 2**30, 3), "step_seconds": round(plan.step_seconds, 4),
                "formula_memory_gb": round(plan.memory.measured.get("formula_bytes", plan.memory.total) / 2**30, 3)},
            "memory_peak_gb": round(measured_peak(session.accelerator.device.type) / 2**30, 3),
            "throughput": clock.throughput(),
        })
        if stopped:
            command = f"afinar train {run.recipe_path if run.recipe_path else 'RECETA'} --resume"
            same = " (con las mismas opciones)" if any(v is not None for v in run.overrides.values()) else ""
            kept = "el modelo" if run.recipe.method == "full" else "el adaptador"
            run.say(f"Detenido a petición en el paso {done} de {total_steps}: {kept} y un checkpoint quedan guardados; "
                    f"continúa con: {command}{same}")
        else:
            took = f" (presupuesto {cfg.max_minutes:g} min, {done} pasos)" if cfg.max_minutes else ""
            run.say(f"Listo en {time.time() - run.started:.0f} s{took}. Adaptador, tokenizador, receta y métricas en "
                    f"{run.run_dir}")
        # Removed once everything is saved: the studio can take its disappearance as "saved". A request that came
        # during the last step is consumed too (the run ended anyway).
        run.stop_file.unlink(missing_ok=True)
    session.accelerator.wait_for_everyone()


def write_artifacts(run: Launch, model, tokenizer, data, chat, info: dict) -> None:
    run_dir, recipe, hw = run.run_dir, run.recipe, run.hw
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
        "hardware": {"device": hw.device, "precision": hw.precision, "reason": hw.reason,
                     "allocator": heap.active_allocator()},
        "processes": run.processes,
        "distributed": run.accelerator.distributed_type.value,
        "data_cache": data.cache,
        **info,
        "versions": versions(),
    }
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2, ensure_ascii=False))


def saved_recipe(checkpoint: Path, run_dir: Path) -> dict:
    import yaml

    path = checkpoint / RECIPE if (checkpoint / RECIPE).is_file() else run_dir / RECIPE
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def cache_note(data) -> str:
    return "tokenizado reutilizado de la caché" if data.cache == "hit" else f"tokenizado y guardado en {data.folder}"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("afinar", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
