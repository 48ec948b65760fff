"""Load on `afinar estudio`: its live event stream and its JSON API under 20 concurrent clients for a minute, memory
flat.

    .venv/bin/python bench/studio_load.py [--clientes 20] [--segundos 60] [--base 20] [--pausa 0.25]

The real studio (`create_app` + uvicorn, as `afinar estudio` serves it) runs in a process of its own on a free
loopback port, with a temporary folder as its workspace, so that its RSS is measured alone (psutil, every second).
Its jobs run a fake `python` (`StudioOptions.python`): a small script that ignores `-m afinar train recetas/carga.yaml`
and, every 0.2 s, appends one line to ejecuciones/carga/metrics.jsonl ({"step", "loss", "step_seconds", "t": when it
was written}) and redraws a tqdm-like bar with '\\r' on its stdout (the job's log), plus a log line every
`--registro-cada` seconds; it exits 0. The recipe and the job are made through the API (POST /api/recetas with the
shipped first-aid data, POST /api/trabajos), as the page does. No model is loaded: only the studio is measured.

Phases, all in this one run:

1. base: 1 client for `--base` seconds: it holds the job's event stream (GET /api/trabajos/{id}/eventos) and, on
   another connection, loops over GET /api/estado, /api/ejecuciones, /api/ejecuciones/carga and /api/trabajos with
   `--pausa` seconds between requests.
2. load: `--clientes` such clients at once for `--segundos` seconds. Each opens its stream without Last-Event-ID
   (a page load: every step so far is replayed), drops it once mid-way for `--hueco` seconds and comes back with
   Last-Event-ID (an EventSource reconnecting: only the missed steps must come back), and keeps it until the job's
   `fin`, which comes a few seconds after the API loops stop.

Measured: the studio's RSS (after a warm-up of `--calentamiento` seconds of load, the maximum, at the end, and the
growth per minute of a least-squares line through the load's samples), its threads, open files and CPU; API latency
p50/p95/max per endpoint and the ratio load/base; events per client and type; the delay from a metrics line being
written to a client reading its `paso` (steps written while connected only); gaps or repeats in the step ids (each
`paso` has id = its line number; every client must see 1..N exactly once, reconnect included); errors. The load
generator shares the machine's cores with the studio: latencies include its own time, only the ratios measured in
the same run mean something. `--pasos-previos N`: the job first writes N lines at once (a long run's history, as
a training of thousands of steps has), so that every page load replays them. Not a test: no thresholds that fail; the last line is the verdict (memory flat when the
RSS at the end is less than 10 % above the RSS after the warm-up, no errors, no gaps).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psutil

RUN = "carga"
STEP_S = 0.2
FLAT = 0.10  # memory flat: end RSS less than 10 % above the RSS after the warm-up
ENDPOINTS = ["/api/estado", "/api/ejecuciones", f"/api/ejecuciones/{RUN}", "/api/trabajos"]
TIMEOUT = httpx.Timeout(30.0, connect=10.0)

LAUNCHER = """
import sys
from pathlib import Path
import uvicorn
from afinar.studio.app import StudioOptions, create_app
from afinar.studio.workspace import Workspace
folder, token, port, python = sys.argv[1:5]
app = create_app(Workspace(Path(folder)), StudioOptions(token=token, port=int(port), python=python))
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""

FAKE_JOB = """#!{python}
# A stand-in for `python -m afinar train recetas/NAME.yaml` (cwd: the studio's folder): metrics and a tqdm-like bar.
import json, sys, time
from pathlib import Path

SECONDS, STEP_S, LOG_EVERY, PREVIOUS = {seconds}, {step_s}, {log_every}, {previous}
recipe = Path(sys.argv[-1])
run = Path("ejecuciones") / recipe.stem
run.mkdir(parents=True, exist_ok=True)
total = PREVIOUS + max(1, round(SECONDS / STEP_S))
every = max(1, round(LOG_EVERY / STEP_S)) if LOG_EVERY > 0 else 0


def clock(s):
    s = int(s)
    return f"{{s // 60:02d}}:{{s % 60:02d}}"


def row(step):
    return json.dumps({{"step": step, "loss": 2.5 * 0.995 ** (step % 1000), "step_seconds": STEP_S,
                        "t": time.time()}}) + "\\n"


print(f"Entrenamiento de prueba de carga: {{total}} pasos ({{recipe}})", flush=True)
start = time.time()
with open(run / "metrics.jsonl", "a", encoding="utf-8") as metrics:
    metrics.write("".join(row(step) for step in range(1, PREVIOUS + 1)))  # a long run's history, at once
    metrics.flush()
    for step in range(PREVIOUS + 1, total + 1):
        time.sleep(max(0.0, start + (step - PREVIOUS) * STEP_S - time.time()))
        metrics.write(row(step))
        metrics.flush()
        elapsed = time.time() - start
        pct = 100 * step // total
        bar = "█" * (pct // 10) + " " * (10 - pct // 10)
        sys.stdout.write(f"\\rEntrenando: {{pct:3d}}%|{{bar}}| {{step}}/{{total}} [{{clock(elapsed)}}<"
                         f"{{clock((total - step) * STEP_S)}}, {{(step - PREVIOUS) / elapsed:.2f}}paso/s]")
        if every and step % every == 0:
            sys.stdout.write(f"\\rpaso {{step}}: pérdida {{2.5 * 0.995 ** (step % 1000):.4f}}\\n")
        sys.stdout.flush()
print("\\nEntrenamiento de prueba terminado.", flush=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the studio's process, sampled ------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """The studio's RSS, threads, open files, TCP connections and CPU seconds, every `every` seconds."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.process, self.every = psutil.Process(pid), every
        self.rows: list[dict] = []
        self.done = threading.Event()

    def sample(self) -> dict:
        p = self.process
        with p.oneshot():
            cpu = p.cpu_times()
            return {"t": time.monotonic(), "rss": p.memory_info().rss, "threads": p.num_threads(),
                    "fds": p.num_fds(), "cpu": cpu.user + cpu.system,
                    "tcp": sum(1 for c in p.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)}

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.rows.append(self.sample())
            except psutil.Error:
                return
            self.done.wait(self.every)

    def between(self, start: float, end: float) -> list[dict]:
        return [r for r in self.rows if start <= r["t"] <= end]


# --- one client: an event stream and an API loop, as a page open in a browser tab -------------------------------


class Client:
    def __init__(self, name: str, url: str, token: str, job_id: str, pause: float, reconnect_at: float | None,
                 gap_s: float):
        self.name, self.url, self.job_id, self.pause = name, url, job_id, pause
        self.headers = {"X-Afinar-Token": token}
        self.reconnect_at, self.gap_s = reconnect_at, gap_s
        self.stop_api = threading.Event()  # the API loop ends
        self.stop_stream = threading.Event()  # the stream ends before `fin` (the base client)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.events: Counter = Counter()
        self.last_id = 0
        self.gaps = 0  # a step id more than one above the last
        self.repeats = 0  # a step id not above the last
        self.wrong_step = 0  # a `paso` whose row is not the line its id says
        self.delays: list[float] = []  # written → read, for lines written while connected
        self.progress_back = 0  # a `progreso` with n below the previous one
        self.progress_n = 0
        self.replay_exact: bool | None = None  # after the reconnect, the first `paso` is last_id + 1
        self.replayed = 0  # steps written while disconnected, received after coming back
        self.first_replay = 0  # steps written before the first connection (the page load's replay)
        self.first_replay_s = 0.0  # from connecting to reading the last of them
        self.fin = False
        self.threads = [threading.Thread(target=self._api_loop, daemon=True),
                        threading.Thread(target=self._stream_loop, daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _api_loop(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=TIMEOUT) as http:
            while not self.stop_api.is_set():
                for path in ENDPOINTS:
                    started = time.perf_counter()
                    try:
                        answer = http.get(path)
                        elapsed = time.perf_counter() - started
                        if answer.status_code != 200:
                            self.errors.append(f"GET {path}: HTTP {answer.status_code} {answer.text[:120]}")
                        else:
                            self.latency[path].append(elapsed)
                    except httpx.HTTPError as exc:
                        self.errors.append(f"GET {path}: {type(exc).__name__}: {exc}")
                    if self.stop_api.wait(self.pause):
                        return

    def _stream_loop(self) -> None:
        reconnect_at = self.reconnect_at
        resume = False
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=TIMEOUT) as http:
            while True:
                headers = {"Last-Event-ID": str(self.last_id)} if resume else {}
                try:
                    outcome = self._read_stream(http, headers, resume, reconnect_at)
                except httpx.HTTPError as exc:
                    self.errors.append(f"eventos: {type(exc).__name__}: {exc}")
                    return
                if outcome != "reconnect":
                    return
                reconnect_at, resume = None, True
                time.sleep(self.gap_s)

    def _read_stream(self, http: httpx.Client, headers: dict, resume: bool, reconnect_at: float | None) -> str:
        connected = time.time()
        first_paso = True
        with http.stream("GET", f"/api/trabajos/{self.job_id}/eventos", headers=headers) as answer:
            if answer.status_code != 200:
                self.errors.append(f"eventos: HTTP {answer.status_code}")
                return "error"
            event, data, event_id = "message", [], None
            for line in answer.iter_lines():
                if line == "":
                    if data:
                        self._dispatch(event, "\n".join(data), event_id, connected, resume, first_paso)
                        if event == "paso":
                            first_paso = False
                        if event == "fin":
                            self.fin = True
                            return "fin"
                    event, data, event_id = "message", [], None
                elif line.startswith(":"):
                    self.events["latido"] += 1
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        event_id = value
                if self.stop_stream.is_set():
                    return "stopped"
                if reconnect_at is not None and time.monotonic() >= reconnect_at:
                    return "reconnect"  # leaving the `with` closes the connection, as a dropped network would
        self.errors.append("eventos: el flujo terminó sin «fin»")
        return "ended"

    def _dispatch(self, event: str, text: str, event_id: str | None, connected: float, resume: bool,
                  first_paso: bool) -> None:
        self.events[event] += 1
        try:
            payload = json.loads(text)
        except ValueError:
            self.errors.append(f"eventos: «{event}» con datos que no son JSON")
            return
        if event == "paso":
            number = int(event_id or 0)
            if resume and first_paso:
                self.replay_exact = number == self.last_id + 1
            if number > self.last_id + 1:
                self.gaps += 1
            elif number <= self.last_id:
                self.repeats += 1
            if payload.get("step") != number:
                self.wrong_step += 1
            self.last_id = max(self.last_id, number)
            written = payload.get("t", 0.0)
            if written >= connected:
                self.delays.append(time.time() - written)
            elif resume:
                self.replayed += 1
            else:
                self.first_replay += 1
                self.first_replay_s = time.time() - connected
        elif event == "progreso":
            if payload.get("n", 0) < self.progress_n:
                self.progress_back += 1
            self.progress_n = max(self.progress_n, payload.get("n", 0))


# --- the run ------------------------------------------------------------------------------------------------------


def start_studio(folder: Path, fake: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    token, port = secrets.token_urlsafe(24), free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(folder), token, str(port), str(fake)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"el estudio terminó al arrancar:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/api/estado", headers={"X-Afinar-Token": token}, timeout=2).status_code == 200:
                return process, url, token
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("el estudio no respondió en 60 s")


def write_fake_job(folder: Path, seconds: float, log_every: float, previous: int) -> Path:
    path = folder / "python-falso"
    path.write_text(FAKE_JOB.format(python=sys.executable, seconds=seconds, step_s=STEP_S, log_every=log_every,
                                    previous=previous),
                    encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_clients(clients: list[Client], seconds: float) -> tuple[float, float]:
    started = time.monotonic()
    for client in clients:
        client.start()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    for client in clients:
        client.stop_api.set()
    ended = time.monotonic()
    for client in clients:
        client.threads[0].join(30)
    return started, ended


def latency_rows(clients: list[Client]) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = defaultdict(list)
    for client in clients:
        for path, values in client.latency.items():
            merged[path].extend(values)
    merged["todas"] = [v for path in ENDPOINTS for v in merged.get(path, [])]
    return merged


def slope_per_minute(rows: list[dict]) -> float:
    if len(rows) < 2:
        return 0.0
    t0 = rows[0]["t"]
    xs, ys = [r["t"] - t0 for r in rows], [r["rss"] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def mb(value: float) -> str:
    return f"{value / 2**20:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clientes", type=int, default=20)
    parser.add_argument("--segundos", type=float, default=60.0, help="duración de la carga con todos los clientes")
    parser.add_argument("--base", type=float, default=20.0, help="segundos con un solo cliente (la referencia)")
    parser.add_argument("--pausa", type=float, default=0.25, help="segundos entre dos peticiones de un cliente")
    parser.add_argument("--hueco", type=float, default=1.0, help="segundos sin conexión al reconectar el flujo")
    parser.add_argument("--calentamiento", type=float, default=5.0, help="segundos de carga antes de medir la RSS")
    parser.add_argument("--registro-cada", type=float, default=1.0,
                        help="segundos entre líneas del registro del trabajo (0: solo la barra, como afinar train)")
    parser.add_argument("--pasos-previos", type=int, default=0,
                        help="líneas de metrics.jsonl que el trabajo escribe de golpe al empezar (una ejecución larga: "
                             "cada página que se abre las recibe todas)")
    args = parser.parse_args()

    info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace") if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    print(f"CPU: {cpu} · {os.cpu_count()} núcleos · Python {sys.version.split()[0]} · httpx {httpx.__version__}")
    tail_s = 3.0  # the job ends this long after the load: its `fin` reaches streams still open
    job_seconds = args.base + args.segundos + tail_s + 1.0
    with tempfile.TemporaryDirectory(prefix="afinar-carga-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "estudio"
        fake = write_fake_job(tmp, job_seconds, args.registro_cada, args.pasos_previos)
        studio_log = tmp / "estudio.log"
        process, url, token = start_studio(folder, fake, studio_log)
        sampler = Sampler(process.pid)
        job_pid = None
        try:
            idle = sampler.sample()
            http = httpx.Client(base_url=url, headers={"X-Afinar-Token": token}, timeout=TIMEOUT)
            answer = http.post("/api/recetas", json={"nombre": RUN, "datos": "afinar:primeros_auxilios"})
            if answer.status_code != 200:
                raise SystemExit(f"POST /api/recetas: HTTP {answer.status_code}: {answer.text[:500]}")
            answer = http.post("/api/trabajos", json={"tipo": "entrenar", "receta": RUN})
            if answer.status_code != 202:
                raise SystemExit(f"POST /api/trabajos: HTTP {answer.status_code}: {answer.text[:500]}")
            job_id, job_pid = answer.json()["id"], answer.json()["pid"]
            sampler.start()
            print(f"Estudio en {url} (pid {process.pid}, RSS en reposo {mb(idle['rss'])}); trabajo falso {job_id}: "
                  f"{job_seconds:.0f} s, un paso cada {STEP_S} s", flush=True)

            print(f"→ base: 1 cliente durante {args.base:.0f} s…", flush=True)
            base = Client("base", url, token, job_id, args.pausa, None, args.hueco)
            base_start, base_end = run_clients([base], args.base)
            base.stop_stream.set()
            base.threads[1].join(30)

            print(f"→ carga: {args.clientes} clientes durante {args.segundos:.0f} s…", flush=True)
            now = time.monotonic()
            rng = random.Random(13)
            clients = [Client(f"c{i + 1}", url, token, job_id, args.pausa,
                              now + args.segundos * rng.uniform(0.35, 0.65), args.hueco) for i in range(args.clientes)]
            load_start, load_end = run_clients(clients, args.segundos)
            for client in clients:  # the streams stay until the job's `fin`
                client.threads[1].join(tail_s + 30)
            for client in clients:
                if client.threads[1].is_alive():
                    client.errors.append("eventos: sin «fin» 30 s después de terminar el trabajo")
                    client.stop_stream.set()
            time.sleep(2.0)  # the studio notices the closed streams
            after = sampler.sample()
            sampler.done.set()
            lines = len((folder / "ejecuciones" / RUN / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
            job = http.get(f"/api/trabajos/{job_id}").json()
            http.close()
        finally:
            sampler.done.set()
            if job_pid is not None and psutil.pid_exists(job_pid):  # stopped early: the fake job too (its own session)
                try:
                    psutil.Process(job_pid).terminate()
                except psutil.Error:
                    pass
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        studio_errors = [line for line in studio_log.read_text(errors="replace").splitlines()
                         if "Traceback" in line or "ERROR" in line or "Exception" in line]

    report(args, base, clients, sampler, idle, after, (base_start, base_end), (load_start, load_end), lines, job,
           studio_errors)


def report(args, base: Client, clients: list[Client], sampler: Sampler, idle: dict, after: dict,
           base_window: tuple[float, float], load_window: tuple[float, float], lines: int, job: dict,
           studio_errors: list[str]) -> None:
    load_start, load_end = load_window
    warm = load_start + args.calentamiento
    rows = sampler.between(warm, load_end + 0.5)
    base_rows = sampler.between(*base_window)
    if not rows:
        raise SystemExit("sin muestras de memoria durante la carga")
    start, end = rows[0], rows[-1]
    peak = max(rows, key=lambda r: r["rss"])
    growth = slope_per_minute(rows)
    cpu_load = (rows[-1]["cpu"] - rows[0]["cpu"]) / max(rows[-1]["t"] - rows[0]["t"], 1e-9)
    cpu_base = ((base_rows[-1]["cpu"] - base_rows[0]["cpu"]) / max(base_rows[-1]["t"] - base_rows[0]["t"], 1e-9)
                if len(base_rows) > 1 else float("nan"))

    print(f"\nMemoria del estudio (RSS, muestreada cada segundo; {len(rows)} muestras tras {args.calentamiento:.0f} s "
          f"de calentamiento):")
    print(f"  en reposo, antes del trabajo      {mb(idle['rss']):>10}")
    print(f"  con 1 cliente (fin de la base)    {mb(base_rows[-1]['rss']) if base_rows else '—':>10}")
    print(f"  inicio de la carga (tras calent.) {mb(start['rss']):>10}   hilos {start['threads']:>3} · archivos "
          f"{start['fds']:>3} · conexiones {start['tcp']:>3}")
    print(f"  máximo                            {mb(peak['rss']):>10}")
    print(f"  fin de la carga                   {mb(end['rss']):>10}   hilos {end['threads']:>3} · archivos "
          f"{end['fds']:>3} · conexiones {end['tcp']:>3}")
    print(f"  tras cerrar todos los clientes    {mb(after['rss']):>10}   hilos {after['threads']:>3} · archivos "
          f"{after['fds']:>3} · conexiones {after['tcp']:>3}")
    change = end["rss"] / start["rss"] - 1
    print(f"  fin − inicio: {(end['rss'] - start['rss']) / 2**20:+.1f} MB ({change:+.1%}); pendiente: "
          f"{growth / 2**20:+.2f} MB/min")
    trace = sampler.between(load_start, load_end + 0.5)[::10]
    print("  RSS cada 10 s de carga (MB): " + " ".join(f"{r['rss'] / 2**20:.1f}" for r in trace))
    print(f"  CPU del estudio: {cpu_base:.0%} de un núcleo con 1 cliente, {cpu_load:.0%} con {len(clients)}")

    base_lat, load_lat = latency_rows([base]), latency_rows(clients)
    base_s, load_s = base_window[1] - base_window[0], load_end - load_start
    print(f"\nAPI (pausa de {args.pausa} s entre peticiones de cada cliente; ms):")
    print(f"{'petición':<26} {'n (1)':>6} {'p50 (1)':>8} {'p95 (1)':>8} {'n (' + str(len(clients)) + ')':>7} "
          f"{'p50':>7} {'p95':>7} {'máx':>7} {'× p50':>7} {'× p95':>7}")
    for path in [*ENDPOINTS, "todas"]:
        one, many = base_lat.get(path, []), load_lat.get(path, [])
        p50_1, p95_1 = percentile(one, 0.5) * 1000, percentile(one, 0.95) * 1000
        p50, p95 = percentile(many, 0.5) * 1000, percentile(many, 0.95) * 1000
        print(f"{path:<26} {len(one):>6} {p50_1:>8.1f} {p95_1:>8.1f} {len(many):>7} {p50:>7.1f} {p95:>7.1f} "
              f"{max(many, default=float('nan')) * 1000:>7.1f} {p50 / p50_1:>6.2f}× {p95 / p95_1:>6.2f}×")
    print(f"  peticiones/s: {len(base_lat['todas']) / base_s:.1f} con 1 cliente, {len(load_lat['todas']) / load_s:.1f} "
          f"con {len(clients)} (× = con {len(clients)} clientes / con 1, en esta misma ejecución)")

    print(f"\nFlujo de eventos (metrics.jsonl: {lines} líneas; trabajo «{job.get('estado')}»):")
    delays = [d for c in clients for d in c.delays]
    per_client = [sum(c.events.values()) for c in clients]
    types = Counter()
    for c in clients:
        types.update(c.events)
    print(f"  eventos por cliente: mín {min(per_client)}, mediana {statistics.median(per_client):.0f}, máx "
          f"{max(per_client)} · " + " · ".join(f"{k} {v}" for k, v in sorted(types.items())))
    print(f"  retraso escrito → leído (pasos escritos con el cliente conectado, {len(delays)}): p50 "
          f"{percentile(delays, 0.5) * 1000:.0f} ms · p95 {percentile(delays, 0.95) * 1000:.0f} ms · máx "
          f"{max(delays, default=float('nan')) * 1000:.0f} ms (el estudio lee cada 0,5 s); con 1 cliente: p50 "
          f"{percentile(base.delays, 0.5) * 1000:.0f} ms · p95 {percentile(base.delays, 0.95) * 1000:.0f} ms")
    complete = sum(1 for c in clients if c.fin and c.last_id == lines)
    exact = sum(1 for c in clients if c.replay_exact)
    replayed = [c.replayed for c in clients]
    print(f"  pasos 1…{lines} completos y terminados en «fin»: {complete}/{len(clients)} clientes · huecos "
          f"{sum(c.gaps for c in clients)} · repetidos {sum(c.repeats for c in clients)} · fila ≠ id "
          f"{sum(c.wrong_step for c in clients)} · progreso hacia atrás {sum(c.progress_back for c in clients)}")
    opened = [c.first_replay_s for c in clients]
    print(f"  al abrir: {statistics.median([c.first_replay for c in clients]):.0f} pasos anteriores repetidos (mediana), "
          f"recibidos en {percentile(opened, 0.5) * 1000:.0f} ms (p50) · {max(opened) * 1000:.0f} ms (máx); "
          f"al reconectar con Last-Event-ID tras {args.hueco:.0f} s: reanudación exacta {exact}/{len(clients)}, "
          f"pasos perdidos recuperados {min(replayed)}–{max(replayed)} por cliente")
    base_ok = base.gaps == 0 and base.repeats == 0 and base.last_id > 0

    errors = [e for c in [base, *clients] for e in c.errors]
    print(f"\nErrores: {len(errors)} en los clientes, {len(studio_errors)} en el registro del estudio")
    for text, count in Counter(errors).most_common(8):
        print(f"  {count}× {text}")
    for line in studio_errors[:8]:
        print(f"  estudio: {line}")

    flat = change < FLAT
    gaps = sum(c.gaps + c.repeats + c.wrong_step for c in clients) + (0 if base_ok else 1)
    ok = flat and not errors and not studio_errors and gaps == 0 and complete == len(clients) and exact == len(clients)
    verdict = "BIEN" if ok else "MAL"
    print(f"\nVeredicto: {verdict} · memoria {'plana' if flat else 'NO plana'} ({mb(start['rss'])} → {mb(end['rss'])}, "
          f"{change:+.1%}, límite +{FLAT:.0%}; {growth / 2**20:+.2f} MB/min) · errores {len(errors) + len(studio_errors)} "
          f"· huecos/repetidos {gaps} · completos {complete}/{len(clients)} · reanudación exacta {exact}/{len(clients)} "
          f"· p95 API ×{percentile(load_lat['todas'], 0.95) / percentile(base_lat['todas'], 0.95):.1f} con "
          f"{len(clients)} clientes")


if __name__ == "__main__":
    main()
