"""One job at a time, each an afinar CLI command in its own process (its own session: closing the browser, the tab
or even the studio does not stop it), its output in a log file and its state in a JSON file beside it.

The studio adds no second code path: «Entrenar» runs `afinar train RECETA`, «Evaluar» `afinar eval RUN`, «Exportar»
`afinar export RUN --formato X`, exactly the command the page shows as «comando equivalente».
«Detener y guardar» asks the training to stop at the end of its step and save (runs.STOP_REQUEST: a file, so it also
works for a job the studio adopted after a restart); «Cancelar» ends the process group (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.runs import RUN_INFO, STOP_REQUEST
from afinar.studio.workspace import Workspace, read_json

RUN_KINDS = ("entrenar", "reanudar", "evaluar", "exportar")  # the jobs of a run folder
KINDS = (*RUN_KINDS, "borradores")  # borradores: `afinar borradores` (drafts from documents: no run folder)
TRAINING = ("entrenar", "reanudar")
CANCEL_GRACE_S = 10.0  # SIGTERM first; whatever is still alive after this gets SIGKILL
# tqdm's line: "Entrenando:  12%|█▏   | 12/100 [00:10<01:20,  1.10paso/s, loss=2.1]" (remaining '?' at first)
PROGRESS = re.compile(r"(?:(?P<desc>[^\r\n:|]+):\s*)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                      r"\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)")
ERROR_LINE = re.compile(r"^error (?:(?P<where>.*?): )?(?P<code>[A-Z]\d{3}): (?P<message>.*)$")
LOG_TAIL_BYTES = 256 * 1024
ONE_AT_A_TIME = "el estudio hace uno cada vez."
BUSY_HINT = "espera a que termine, o deténlo en el panel de arriba"


class JobConflict(AfinarError):
    """A second job while one runs: the page says which one and offers to wait (HTTP 409)."""


def command_line(argv: list[str]) -> str:
    """What the user would type: `afinar train recetas/x.yaml` (quoted for a POSIX shell)."""
    return "afinar " + " ".join(shlex.quote(a) for a in argv)


def seconds(clock: str) -> int | None:
    """tqdm's '01:20' / '1:02:03' → seconds; '?' → None."""
    if not clock or "?" in clock:
        return None
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def log_lines(text: str) -> list[str]:
    """The log as a person reads it: each line's last carriage-return fragment (tqdm redraws with '\\r')."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def progress_of(text: str) -> dict | None:
    """The last progress bar in the log: phase, n/total, elapsed and ETA in seconds."""
    fragments = re.split(r"[\r\n]", text)
    for fragment in reversed(fragments):
        match = PROGRESS.search(fragment)
        if match:
            return {"fase": (match["desc"] or "").strip(), "n": int(match["n"]), "total": int(match["total"]),
                    "transcurrido_s": seconds(match["elapsed"]), "eta_s": seconds(match["remaining"])}
    return None


def error_of(lines: list[str]) -> dict | None:
    """The afinar error the command printed last (code, place, message, suggestion), or the last line of a traceback."""
    for index in range(len(lines) - 1, -1, -1):
        match = ERROR_LINE.match(lines[index])
        if match:
            message = [match["message"]]
            hint = None
            for follow in lines[index + 1:]:
                if follow.startswith("  sugerencia:"):
                    hint = follow.split(":", 1)[1].strip()
                elif follow.startswith("  ") and hint is None:
                    message.append(follow.strip())  # multi-line messages (a recipe's list of problems)
                else:
                    break
            return {"codigo": match["code"], "donde": match["where"], "mensaje": "\n".join(message), "sugerencia": hint}
    if any(line.startswith("Traceback") for line in lines):
        last = next((line for line in reversed(lines) if line.strip()), "")
        return {"codigo": None, "donde": None, "mensaje": f"error inesperado: {last}",
                "sugerencia": "pulsa «Copiar diagnóstico» y compártelo con quien mantiene afinar"}
    return None


def tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie — our own child not yet reaped — counts as ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class JobManager:
    def __init__(self, workspace: Workspace, python: str = sys.executable, env: dict | None = None):
        self.ws = workspace
        self.python = python
        self.env = env or {}
        self._lock = threading.Lock()
        self._current: dict | None = None
        self._recover()

    # --- reading ------------------------------------------------------------------------------------------------------

    def _record_path(self, job_id: str) -> Path:
        if not re.match(r"^[\w.-]+$", job_id or ""):
            raise AfinarError("E021", "identificador de trabajo no válido.", where=str(job_id))
        return self.ws.jobs / f"{job_id}.json"

    def get(self, job_id: str) -> dict:
        record = read_json(self._record_path(job_id))
        if not record:
            raise AfinarError("E022", "no existe ese trabajo.", where=job_id)
        return record

    def log_path(self, job_id: str) -> Path:
        return self.ws.jobs / f"{job_id}.log"

    def current(self) -> dict | None:
        """The running job, or None."""
        with self._lock:
            return dict(self._current) if self._current else None

    def all(self) -> list[dict]:
        return [r for r in (read_json(p) for p in sorted(self.ws.jobs.glob("*.json"))) if r]

    def latest(self, kinds: tuple[str, ...] = RUN_KINDS) -> dict[str, dict]:
        """Each run's newest job of these kinds (the list and a run's page show its state), from one read of the
        records."""
        newest: dict[str, dict] = {}
        for record in self.all():
            run = record.get("ejecucion")
            if record.get("tipo") in kinds and record.get("inicio", 0) >= newest.get(run, {}).get("inicio", 0):
                newest[run] = record
        return newest

    def check_free(self, why: str = ONE_AT_A_TIME, hint: str = BUSY_HINT) -> None:
        """E020 (HTTP 409) while a job runs: said before anything else a request would refuse."""
        busy = self.current()
        if busy:
            raise _conflict(busy, why, hint)

    def training_chains(self) -> dict[str, list[dict]]:
        """Each run's trainings since its last fresh start: «entrenar», then every «reanudar» after it (a run stopped
        and resumed twice is one run of three pieces: its date is the first's, its duration their sum)."""
        chains: dict[str, list[dict]] = {}
        for record in sorted(self.all(), key=lambda r: r.get("inicio", 0)):
            if record.get("tipo") == "entrenar":
                chains[record.get("ejecucion")] = [record]
            elif record.get("tipo") == "reanudar":
                chains.setdefault(record.get("ejecucion"), []).append(record)
        return chains

    def last_for(self, run: str) -> dict | None:
        return self.latest().get(run)

    # --- starting and ending ------------------------------------------------------------------------------------------

    def start(self, kind: str, run: str, argv: list[str]) -> dict:
        if kind not in KINDS:
            raise AfinarError("E023", f"tipo de trabajo desconocido: {kind}", hint=", ".join(KINDS))
        with self._lock:
            if self._current:
                raise _conflict(self._current)
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{run}"
            if self._record_path(job_id).exists():  # two starts in the same second (the first failed at once)
                job_id += f"-{int(time.time() * 1000) % 1000:03d}"
            log_path = self.log_path(job_id)
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "1",
                   "PYTHONIOENCODING": "utf-8"}
            # Its own session (POSIX) or process group (Windows): the studio's Ctrl-C or end does not reach it.
            detached = ({"start_new_session": True} if os.name == "posix"
                        else {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)})
            with open(log_path, "wb") as log:
                process = subprocess.Popen([self.python, "-m", "afinar", *argv], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=self.ws.root, env=env, **detached)
            record = {"id": job_id, "tipo": kind, "ejecucion": run, "argv": argv, "comando": command_line(argv),
                      "pid": process.pid, "inicio": time.time(), "estado": "en_curso"}
            self._write(record)
            self._current = record
        threading.Thread(target=self._wait, args=(record, process), daemon=True).start()
        return dict(record)

    def _write(self, record: dict) -> None:
        atomic_write_text(self._record_path(record["id"]), json.dumps(record, indent=2, ensure_ascii=False))

    def _wait(self, record: dict, process: subprocess.Popen | None) -> None:
        if process is not None:
            code = process.wait()
        else:  # adopted after a restart: not our child, so poll
            while _alive(record["pid"]):
                time.sleep(1.0)
            code = None
        self._finish(record, code)

    def _finish(self, record: dict, code: int | None) -> None:
        with self._lock:
            record = read_json(self._record_path(record["id"])) or record  # with the stop/cancel requests since
            record["fin"] = time.time()
            record["codigo_salida"] = code
            run_dir = self.ws.runs / record["ejecucion"]
            if record.get("cancelar_pedido"):
                record["estado"] = "cancelado"
            elif code == 0:
                info = read_json(run_dir / RUN_INFO)
                stopped = record["tipo"] in TRAINING and info.get("stopped")
                record["estado"] = "detenido" if stopped else "terminado"
            elif code is None:  # adopted: the exit code is lost; the run folder says how it ended
                info = read_json(run_dir / RUN_INFO)
                record["estado"] = ("terminado" if info and info.get("train_seconds") and
                                    (run_dir / RUN_INFO).stat().st_mtime >= record["inicio"] else "interrumpido")
            else:
                record["estado"] = "fallido"
            if record["estado"] in ("fallido", "interrumpido"):
                record["error"] = error_of(log_lines(tail(self.log_path(record["id"])))) or {
                    "codigo": None, "donde": None, "sugerencia": "mira el registro y «Copiar diagnóstico»",
                    "mensaje": f"el proceso terminó con el código {code}" if code is not None else
                    "el estudio se cerró mientras corría y el proceso ya no está"}
            if record["tipo"] in TRAINING:
                (run_dir / STOP_REQUEST).unlink(missing_ok=True)
            self._write(record)
            if self._current and self._current["id"] == record["id"]:
                self._current = None

    def stop_and_save(self, job_id: str) -> dict:
        """«Detener y guardar»: the training ends its step, saves a checkpoint and the adapter, and exits."""
        record = self._running(job_id)
        if record["tipo"] not in TRAINING:
            raise AfinarError("E024", "solo un entrenamiento se puede detener y guardar; este trabajo se cancela.")
        run_dir = self.ws.runs / record["ejecucion"]
        if not run_dir.is_dir():
            raise AfinarError("E012", "la carpeta de esta ejecución ya no existe: no hay dónde guardar.",
                              where=record["ejecucion"], hint="usa «Cancelar»")
        (run_dir / STOP_REQUEST).touch()
        record["detener_pedido"] = time.time()
        self._update(record)
        threading.Thread(target=self._keep_requesting, args=(record["id"], run_dir / STOP_REQUEST), daemon=True).start()
        return record

    def _keep_requesting(self, job_id: str, request: Path) -> None:
        """`afinar train` removes a stop request left over from an earlier run when it starts: a click in the seconds
        before that would be lost, so the request is put back until the job ends (the training deletes it once it
        has saved; _finish removes whatever is left)."""
        while read_json(self._record_path(job_id)).get("estado") == "en_curso":
            if not request.exists() and request.parent.is_dir():
                request.touch()
            time.sleep(0.5)

    def cancel(self, job_id: str) -> dict:
        """«Cancelar»: the whole process group ends now (SIGTERM, SIGKILL after a grace); checkpoints already written
        stay, nothing of the current step is saved."""
        record = self._running(job_id)
        record["cancelar_pedido"] = time.time()
        self._update(record)
        threading.Thread(target=_end_tree, args=(record["pid"],), daemon=True).start()
        return record

    def _running(self, job_id: str) -> dict:
        record = self.get(job_id)
        if record.get("estado") != "en_curso":
            raise AfinarError("E025", "ese trabajo ya no está en curso.", where=job_id)
        return record

    def _update(self, record: dict) -> None:
        with self._lock:
            self._write(record)
            if self._current and self._current["id"] == record["id"]:
                self._current = dict(record)

    def _recover(self) -> None:
        """A studio started again finds its jobs: one still running is adopted (watched until it ends), one whose
        process is gone is marked «interrumpido»."""
        for record in self.all():
            if record.get("estado") != "en_curso":
                continue
            if _alive(record.get("pid", 0)) and "afinar" in _cmdline(record["pid"]):
                self._current = record
                threading.Thread(target=self._wait, args=(record, None), daemon=True).start()
            else:
                self._finish(record, None)

    def shutdown(self) -> None:
        """Nothing to do for running jobs: they belong to their own session and go on without the studio."""


def _conflict(busy: dict, why: str = ONE_AT_A_TIME, hint: str = BUSY_HINT) -> JobConflict:
    return JobConflict("E020", f"ya hay un trabajo en curso ({busy['tipo']} de «{busy['ejecucion']}»): {why}", hint=hint)


def _end_tree(pid: int) -> None:
    """SIGTERM to the job and its children (the supervised training under `afinar train`), SIGKILL to whatever is
    left after CANCEL_GRACE_S."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=CANCEL_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""
