"""A job's live progress as server-sent events, read from the files the job writes (metrics.jsonl, its log, its state):
the browser can close, reload or lose the connection without touching the job, and gets back what it missed.

Events: `paso` (one metrics.jsonl line, with `id:` = how many lines so far: a reconnect sends Last-Event-ID and gets
only the later ones; a reload without it gets them all and redraws the chart), `progreso` (the command's own bar:
phase, n/total, ETA), `registro` (new log lines), `estado` (the job's record), `fin` (the job ended: state and error).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from afinar.runs import METRICS
from afinar.studio.jobs import JobManager, log_lines, progress_of, tail

POLL_S = 0.5
HEARTBEAT_S = 15.0
LOG_SNAPSHOT_LINES = 40
READ_LIMIT = 1 << 20  # bytes of metrics.jsonl read per poll


def sse(event: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def loss_reading(losses: list[float], eval_losses: list[float]) -> str:
    """One line a nurse can read under the loss chart."""
    if any(not math.isfinite(v) for v in losses):
        return ("El error ya no es un número (NaN): el entrenamiento se ha estropeado; baja la velocidad de aprendizaje "
                "(opciones avanzadas) y vuelve a empezar.")
    if len(losses) < 5:
        return "Aún son pocos pasos para leer la curva."
    window = max(2, len(losses) // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    change = last / first - 1 if first else 0.0
    numbers = f"({_num(first)} → {_num(last)})"
    if change < -0.05:
        text = f"La pérdida (el error con tus ejemplos) baja {numbers}: el modelo está aprendiendo tus ejemplos."
        if len(eval_losses) >= 3 and eval_losses[-1] > min(eval_losses) * 1.03:
            text += (" Pero con los ejemplos apartados vuelve a subir: empieza a memorizarlos en vez de aprender "
                     "(sobreajuste); con menos pasadas bastaría.")
        return text
    if change > 0.05:
        return f"La pérdida sube {numbers}: la velocidad de aprendizaje (tasa de aprendizaje) puede ser demasiado alta."
    return (f"La pérdida apenas cambia {numbers}: si sigue así, prueba una velocidad de aprendizaje mayor o revisa que "
            "las respuestas enseñen algo.")


def _num(value: float) -> str:
    return f"{value:.2f}".replace(".", ",")


class MetricsTail:
    """metrics.jsonl read incrementally: only complete lines (the training may be half-way through writing one)."""

    def __init__(self, path: Path, skip: int):
        self.path, self.offset, self.count, self.skip = path, 0, 0, skip
        self.losses: list[float] = []
        self.eval_losses: list[float] = []

    def new_rows(self) -> list[tuple[int, dict]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # the run was started again over the same folder (--sobrescribir): from the top
            self.offset = self.count = 0
            self.losses, self.eval_losses = [], []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(READ_LIMIT)  # a long run's replay comes over a few polls, not all in memory at once
        rows = []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self.count += 1
            if "loss" in row:
                self.losses.append(row["loss"])
            if "eval_loss" in row:
                self.eval_losses.append(row["eval_loss"])
            if self.count > self.skip:
                rows.append((self.count, row))
        return rows


class LogTail:
    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.pending = ""

    def snapshot(self) -> list[str]:
        """The last lines now (a new connection starts with these), and from here on only new ones."""
        text = tail(self.path)
        try:
            self.offset = self.path.stat().st_size
        except OSError:
            self.offset = 0
        return _readable(log_lines(text))[-LOG_SNAPSHOT_LINES:]

    def new_lines(self) -> tuple[list[str], str]:
        """(complete new lines, the raw new text: the progress bar is read from it)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return [], ""
        if size <= self.offset:
            return [], ""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read(size - self.offset).decode("utf-8", "replace")
        self.offset = size
        text = self.pending + text
        complete, _, self.pending = text.rpartition("\n")
        # The training redraws its bar with '\r' and no newline for as long as it runs: only the last redraw matters.
        self.pending = self.pending[self.pending.rfind("\r"):][-8192:] if "\r" in self.pending else self.pending[-8192:]
        return _readable(log_lines(complete)) if complete else [], text


def _readable(lines: list[str]) -> list[str]:
    """Log lines without the progress bar's redraws (shown as the bar) and without blank lines."""
    return [line for line in lines if line.strip() and not progress_of(line)]


async def job_events(jobs: JobManager, runs_dir: Path, job_id: str, last_id: int,
                     disconnected: Callable[[], asyncio.Future[bool]], poll_s: float = POLL_S) -> AsyncIterator[str]:
    record = jobs.get(job_id)
    yield "retry: 3000\n\n"
    yield sse("estado", record)
    metrics = MetricsTail(runs_dir / record["ejecucion"] / METRICS, skip=last_id)
    log = LogTail(jobs.log_path(job_id))
    yield sse("registro", {"lineas": log.snapshot(), "reemplazar": True})
    progress = progress_of(tail(jobs.log_path(job_id), 8192))
    if progress:
        yield sse("progreso", progress)
    last_beat = time.monotonic()
    def steps() -> list[str]:
        rows = metrics.new_rows()
        # One reading per batch (of the whole curve so far): per row, replaying a long run would be quadratic.
        reading = loss_reading(metrics.losses, metrics.eval_losses) if rows else ""
        return [sse("paso", {**row, "lectura": reading}, count) for count, row in rows]

    while True:
        for event in steps():
            yield event
        lines, raw = log.new_lines()
        if lines:
            yield sse("registro", {"lineas": lines})
        latest = progress_of(raw) if raw else None
        if latest and latest != progress:
            progress = latest
            yield sse("progreso", progress)
        current = jobs.get(job_id)
        if current != record:
            record = current
            if record.get("estado") != "en_curso":
                while events := steps():  # what the job wrote just before it ended (maybe over several reads)
                    for event in events:
                        yield event
                lines, _ = log.new_lines()
                if lines:
                    yield sse("registro", {"lineas": lines})
                yield sse("fin", record)
                return
            yield sse("estado", record)
        if record.get("estado") != "en_curso":
            yield sse("fin", record)
            return
        if time.monotonic() - last_beat > HEARTBEAT_S:
            last_beat = time.monotonic()
            yield ": latido\n\n"
        if await disconnected():
            return
        await asyncio.sleep(poll_s)
