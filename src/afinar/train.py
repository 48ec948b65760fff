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
Each stage is a short function or object in afinar/train_stages.py; reusable pieces (checkpoints, RNG, the loss,
metrics) live in afinar/training.py. Only the loop is written here, inline.
"""
from __future__ import annotations

import time
from pathlib import Path

from afinar import supervise
from afinar import train_stages as stages
from afinar.config import Override, Recipe, apply_overrides, load_recipe
from afinar.runs import RUN_INFO
from afinar.training import checkpoint_dirs, perplexity, read_metrics, token_loss_sum

__all__ = ["RUN_INFO", "checkpoint_dirs", "read_metrics", "train"]


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
    from tqdm.auto import tqdm

    # --- stage 0: recipe and launch checks (nothing is written before these pass) -----------------------------
    run = stages.launch(recipe, overrides, resume=resume, overwrite=overwrite, plan_only=plan_only)
    cfg, accelerator = run.cfg, run.accelerator
    # --- stage 1: data, and the plan's memory check before any weight is read ---------------------------------
    data = stages.load_data(run, progress)
    check = None if resume else stages.check_memory(run, data, force)
    stages.compact_heap(run, check)
    # --- stage 2: model -----------------------------------------------------------------------------------------
    model, cold = stages.build_model(run, data)
    # --- stage 3: optimizer (the schedule waits for the plan: a time budget decides the number of steps) -------
    session = stages.Session(run, data, model, cold)
    # --- stage 4: resume, or the measured plan and the time budget; then the schedule and the run folder ------
    if resume:
        session.check_resume(force)
    plan = session.measure(check, resume=resume, plan_only=plan_only)
    if plan_only:
        return plan
    session.open(resume)
    model, optimizer, scheduler, head = session.model, session.optimizer, session.scheduler, session.head
    start_step, total_steps = session.start_step, session.total_steps

    # --- stage 5: the loop --------------------------------------------------------------------------------------
    clock = stages.StepClock(run.deadline, session.budget.step_s if session.budget else 0.0, session.eval_seconds,
                             cfg.eval_every)
    bar = tqdm(total=total_steps, initial=start_step, desc="Entrenando", unit="paso",
               disable=not (progress and run.main), dynamic_ncols=True)
    loss_value = eval_loss = float("nan")
    done, stopped = start_step, False
    model.train()
    try:
        for step in range(start_step + 1, total_steps + 1):
            t0 = time.time()
            micro = session.micro_batches(step)  # [(epoch, rows, batch)] per micro-batch of this process
            n_step, real, examples, late, stopped = session.step_counts(micro, clock.late(step))
            if stopped or late:
                break
            # Token-weighted: each micro-batch's summed loss over the step's labelled tokens on all processes, so
            # accumulation and processes add up to one large batch. DDP averages gradients over processes and
            # accelerator.backward divides by grad_accum: both are undone by this factor.
            scale = cfg.grad_accum * run.processes / max(n_step, 1)
            step_sum = 0.0
            for _, _, batch in micro:  # batch: input_ids/labels (B, W) + position_ids (packed) or attention_mask
                with accelerator.accumulate(model):
                    loss_sum, _ = token_loss_sum(model, batch, head, accelerator.autocast)
                    accelerator.backward(loss_sum * scale)
                    step_sum += float(loss_sum.detach())
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(session.params, cfg.max_grad_norm or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_value = session.reduce_sums(step_sum, 0)[0] / max(n_step, 1)
            elapsed = clock.count(t0, real, n_step, examples)
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
                measured = session.validation_loss()
                if measured is not None:
                    eval_loss = measured
                    record.update(eval_loss=eval_loss, eval_ppl=perplexity(eval_loss))
            session.log(step, record)
            if step % cfg.save_every == 0 and step != total_steps:
                session.write_checkpoint(step)
            bar.set_postfix(loss=f"{loss_value:.3f}", eval=f"{eval_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not stages.is_out_of_memory(exc):
            raise
        bar.close()
        raise stages.out_of_memory_error(plan or check, run.run_dir, done + 1) from exc
    bar.close()

    # A stop request, or the time budget ran out before the plan (a slower machine than measured): end here, with
    # the held-out loss of the last step.
    if done < total_steps:
        if not stopped:
            run.say(f"Se acaba el presupuesto de {cfg.max_minutes:g} min: fin en el paso {done} de {total_steps} planeados.")
        if done > start_step and done % cfg.eval_every != 0:
            measured = session.validation_loss()
            if measured is not None:
                eval_loss = measured
                session.log(done, {"step": done, "eval_loss": eval_loss, "eval_ppl": perplexity(eval_loss)})

    # --- stage 6: artifacts -------------------------------------------------------------------------------------
    stages.finish(session, clock, done, stopped, loss_value, eval_loss)
    return run.run_dir


# --- the command line -----------------------------------------------------------------------------------------------


def train_command(recipe: str, argv: list[str], overrides: dict | None = None, **options) -> int:
    """`afinar train RECIPE`: train (the other options are its parameters) in a child process that afinar.supervise
    watches, so that a kill by the system is explained; in that child, or under a launcher, train here."""
    if supervise.needed():
        run_dir = apply_overrides(load_recipe(recipe), overrides or {}).run_dir()  # R00x here, before any child
        return supervise.run_child(argv, run_dir)
    train(recipe, overrides=overrides, **options)
    return 0


def train_command_arguments(p) -> None:
    """The options of `afinar train`: the recipe keys they change (config.Override), and train's parameters."""
    p.add_argument("recipe", help="receta .yaml (ver recipes/)")
    p.add_argument("--max-steps", type=int, dest="overrides", action=Override, key="train.max_steps")
    p.add_argument("--minutos", "--minutes", type=float, dest="overrides", action=Override, key="train.max_minutes",
                   help="presupuesto de tiempo: los pasos que quepan en N minutos en este equipo (train.max_minutes)")
    p.add_argument("--epochs", type=float, dest="overrides", action=Override, key="train.epochs")
    p.add_argument("--lr", type=float, dest="overrides", action=Override, key="train.lr")
    p.add_argument("--batch-size", type=int, dest="overrides", action=Override, key="train.batch_size")
    p.add_argument("--grad-accum", type=int, dest="overrides", action=Override, key="train.grad_accum")
    p.add_argument("--tokens-per-batch", type=int, dest="overrides", action=Override, key="train.tokens_per_batch",
                   help="tokens por micro-lote (memoria acotada; train.tokens_per_batch)")
    p.add_argument("--max-length", type=int, dest="overrides", action=Override, key="data.max_length")
    p.add_argument("--seed", type=int, dest="overrides", action=Override, key="train.seed")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], dest="overrides", action=Override,
                   key="train.precision")
    p.add_argument("--base", dest="overrides", action=Override, key="model.base",
                   help="modelo base: smollm2-135m, carpeta, .gguf, id del Hub u ollama:NOMBRE[:etiqueta] (un modelo ya "
                        "descargado en Ollama)")
    p.add_argument("--output", dest="overrides", action=Override, key="output_dir",
                   help="carpeta de la ejecución (por defecto runs/<nombre>)")
    p.add_argument("--resume", action="store_true",
                   help="continúa desde el último checkpoint completo")
    p.add_argument("--forzar", "--force", dest="force", action="store_true",
                   help="entrena aunque el plan diga que no cabe; con --resume, continúa aunque la receta cambiara "
                        "lote, semilla, datos o LoRA")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true",
                   help="borra la carpeta de salida si existe")
    p.add_argument("--sin-progreso", dest="progress", action="store_false",
                   help="sin barra de progreso (registros de CI)")
