// afinar estudio: plain JavaScript, no build step, nothing from a CDN. Every request carries the launch token
// (header X-Afinar-Token; the event stream uses the same-site cookie the page set).
"use strict";

const TOKEN = document.querySelector('meta[name="afinar-token"]').content;
const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
const KEY = "afinar-estudio-" + location.port;
const S = Object.assign({datos: null, receta: null, ejecucion: null}, JSON.parse(localStorage.getItem(KEY) || "{}"));
let CONFIG = null;
let stream = null;        // EventSource of the job being watched
let watched = null;       // its record
let points = [];          // [{step, loss, eval_loss}] for the chart, by step
const byStep = new Map(); // step → its metrics (what `points` is drawn from)
let drawPending = false;

// The token must not stay in the address bar (history, screenshots): the cookie now holds it.
if (location.search.includes("token=")) history.replaceState(null, "", "/" + location.hash);

function save() { localStorage.setItem(KEY, JSON.stringify(S)); showContext(); }
function say(text) { $("#estado").textContent = text; }
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k in node) node[k] = v; else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) node.append(c.nodeType ? c : String(c));
  return node;
}
const num = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x)) ? "—" : Number(x).toFixed(d).replace(".", ",");
const pct = (x) => (x === null || x === undefined) ? "—" : Math.round(100 * x) + " %";
function minutes(s) {
  if (s === null || s === undefined) return "—";
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.round((s % 3600) / 60)).padStart(2, "0")} min`;
  return s >= 60 ? `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

// --- API: errors come back as {error: {codigo, mensaje, donde, sugerencia}} and are shown in Spanish ---------------
class ApiError extends Error { constructor(e, status) { super(e.mensaje); this.e = e; this.status = status; } }
async function api(method, path, body, extra = {}) {
  const headers = {"X-Afinar-Token": TOKEN, ...(extra.headers || {})};
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof File)) {
    headers["Content-Type"] = "application/json"; payload = JSON.stringify(body);
  }
  const r = await fetch(path, {method, headers, body: payload, credentials: "same-origin"});
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError((data && data.error) || {mensaje: `error ${r.status}`}, r.status);
  return data;
}
function showError(err) {
  const box = $("#aviso");
  const e = err.e || {mensaje: String(err)};
  box.replaceChildren(
    el("p", {}, el("b", {}, e.codigo ? `${e.codigo}: ` : "Error: "), e.mensaje, e.donde ? ` (${e.donde})` : ""),
    e.sugerencia ? el("p", {}, "Qué hacer: ", e.sugerencia) : null,
    el("button", {type: "button", onclick: () => { box.hidden = true; }}, "Cerrar"));
  box.hidden = false;
  say(`Error${e.codigo ? " " + e.codigo : ""}: ${e.mensaje}`);
}
function clearError() { $("#aviso").hidden = true; }
async function guarded(fn) {
  clearError();
  try { return await fn(); } catch (err) { showError(err); }
}

// --- navigation -----------------------------------------------------------------------------------------------------
function go(step) {
  for (const s of $$(".paso")) s.hidden = s.id !== "paso-" + step;
  for (const b of $$("nav button")) b.setAttribute("aria-current", b.dataset.paso === step ? "step" : "false");
  location.hash = step;
  if (step === "ejecuciones") loadRuns();
  if (step === "evaluar") showEvaluation();
  if (step === "exportar") showExports();
  const heading = $(`#paso-${step} h2`);
  if (heading) { heading.tabIndex = -1; heading.focus(); }
}
function showContext() {
  $("#ctx-datos").textContent = S.datos ? S.datos.nombre : "ninguno";
  $("#ctx-receta").textContent = S.receta || "ninguna";
  $("#ctx-ejecucion").textContent = S.ejecucion || "ninguna";
  for (const b of ["#ver-informe", "#ver-ejemplos"]) $(b).disabled = !S.datos;
}

// --- 1. Datos -------------------------------------------------------------------------------------------------------
function showValidation(v, name) {
  const box = $("#validacion");
  const parts = [el("p", {}, `${name}: ${v.ejemplos} ejemplos válidos, ${v.total_errores} errores, ${v.total_avisos} avisos.`)];
  if (v.total_errores) parts.push(el("p", {class: "malo"}, "Corrige estos errores en tu archivo y vuelve a subirlo (no se entrena con errores):"));
  const list = el("ul", {class: "problemas"});
  for (const p of [...v.errores, ...v.avisos]) {
    list.append(el("li", {class: "problema " + (v.errores.includes(p) ? "error" : "aviso"), "data-linea": p.linea ?? "", "data-codigo": p.codigo},
      el("b", {}, p.linea ? `Línea ${p.linea}` : "Archivo"), ` · ${p.codigo}: ${p.mensaje}`,
      p.arreglo ? el("span", {class: "arreglo"}, ` — Cómo arreglarlo: ${p.arreglo}`) : null));
  }
  if (list.children.length) parts.push(list);
  box.replaceChildren(...parts);
}
async function useDataset(id, name) {
  S.datos = {id, nombre: name}; save();
  const shipped = id.startsWith("afinar:") && CONFIG.datos_incluidos[id.slice(7)];
  if (shipped) for (const c of $$("input[name=comprobacion]")) c.checked = shipped.comprobaciones.includes(c.value);
  $("#informe-datos").replaceChildren(); $("#ejemplos").replaceChildren();
  say(`Comprobando ${name}…`);
  const v = await api("GET", `/api/datos/${encodeURIComponent(id)}/validacion`);
  showValidation(v, name);
  say(`${name}: ${v.ejemplos} ejemplos, ${v.total_errores} errores.`);
}
async function upload() {
  const file = $("#archivo").files[0];
  if (!file) throw new ApiError({mensaje: "elige primero un archivo .jsonl"});
  if (CONFIG && file.size > CONFIG.max_subida_mb * 1048576)
    throw new ApiError({codigo: "E013", mensaje: `el archivo ocupa más de ${CONFIG.max_subida_mb} MB, el límite del estudio`});
  say(`Subiendo ${file.name}…`);
  const r = await api("POST", "/api/datos", file, {headers: {"X-Nombre-Archivo": encodeURIComponent(file.name), "Content-Type": "application/octet-stream"}});
  S.datos = {id: r.id, nombre: file.name}; save();
  showValidation(r.validacion, file.name);
  say(`${file.name} subido: ${r.validacion.ejemplos} ejemplos, ${r.validacion.total_errores} errores.`);
  await loadDatasets();
}
function dataQuery() {
  const base = $("#base").value === "otra" ? $("#base-otra").value : $("#base").value;
  return `base=${encodeURIComponent(base || "smollm2-135m")}&plantilla=${encodeURIComponent($("#plantilla").value || "auto")}&max_length=${$("#max-length").value || 512}`;
}
async function dataReport() {
  say("Revisando los datos (longitudes en tokens, duplicados, idioma, datos personales)…");
  const r = await api("GET", `/api/datos/${encodeURIComponent(S.datos.id)}/informe?${dataQuery()}`);
  const personal = r.personal_data;
  const parts = [el("h3", {}, "Revisión previa"), el("ul", {}, r.resumen.map((l) => el("li", {}, l.trim())))];
  if (personal.count) parts.splice(1, 0, el("p", {class: "malo"}, `Posibles datos personales en ${personal.count} sitios: revísalos y anonimiza antes de entrenar.`));
  $("#informe-datos").replaceChildren(...parts);
  say("Revisión previa lista.");
}
async function examples() {
  say("Preparando 3 ejemplos como los verá el modelo…");
  const r = await api("GET", `/api/datos/${encodeURIComponent(S.datos.id)}/ejemplos?${dataQuery()}`);
  const parts = [el("h3", {}, "Así los ve el modelo"), el("p", {}, "Resaltado: los tokens que el modelo aprende a escribir (la respuesta y su fin de turno). Lo demás es contexto.")];
  for (const e of r.ejemplos) {
    const pre = el("pre", {class: "ejemplo"});
    for (const [text, trained] of e.segments || []) pre.append(trained ? el("mark", {}, text) : document.createTextNode(text));
    parts.push(el("p", {}, `${e.place}: ${e.tokens} tokens, ${e.trained_tokens} entrenados; fin de turno entrenado: ${e.end_of_turn_trained ? "sí" : "NO"}`), pre);
  }
  if (!r.tokens) parts.push(el("p", {class: "malo"}, "No se pudo cargar el tokenizador de ese modelo base."));
  $("#ejemplos").replaceChildren(...parts);
  say("Ejemplos listos.");
}
async function loadDatasets() {
  const r = await api("GET", "/api/datos");
  $("#subidos").replaceChildren(...(r.subidos.length ? r.subidos.map((d) => el("option", {value: d.id}, `${d.id} (${Math.ceil(d.bytes / 1024)} KB)`)) : [el("option", {value: ""}, "(ninguno todavía)")]));
}

// --- 2. Modelo ------------------------------------------------------------------------------------------------------
function fillPreset() {
  const p = CONFIG.preajustes[$("input[name=preajuste]:checked").value].receta;
  $("#minutos").value = p.train.max_minutes ?? 0; $("#epocas").value = p.train.epochs; $("#lr").value = p.train.lr;
  $("#lora-r").value = p.lora.r; $("#lote").value = p.train.batch_size;
}
function recipeForm() {
  if (!S.datos) throw new ApiError({mensaje: "elige primero los datos (paso 1)"});
  const preset = CONFIG.preajustes[$("input[name=preajuste]:checked").value].receta;
  const adv = {};
  const put = (key, id, parse, presetValue) => { const v = $(id).value; if (v !== "" && parse(v) !== presetValue) adv[key] = parse(v); };
  put("train.max_minutes", "#minutos", Number, preset.train.max_minutes);
  put("train.epochs", "#epocas", Number, preset.train.epochs);
  put("train.lr", "#lr", Number, preset.train.lr);
  put("lora.r", "#lora-r", (v) => parseInt(v, 10), preset.lora.r);
  put("train.batch_size", "#lote", (v) => parseInt(v, 10), preset.train.batch_size);
  put("data.max_length", "#max-length", (v) => parseInt(v, 10), 512);
  if (adv["lora.r"]) adv["lora.alpha"] = 2 * adv["lora.r"];
  return {
    nombre: $("#nombre").value.trim(), datos: S.datos.id,
    base: $("#base").value === "otra" ? $("#base-otra").value.trim() : $("#base").value,
    plantilla: $("#plantilla").value, preajuste: $("input[name=preajuste]:checked").value,
    sistema: $("#sistema").value.trim() || null,
    comprobaciones: $$("input[name=comprobacion]:checked").map((c) => c.value), avanzado: adv,
  };
}
async function saveRecipe() {
  const r = await api("POST", "/api/recetas", recipeForm());
  S.receta = r.nombre; save();
  $("#receta-yaml").textContent = r.yaml; $("#receta-detalle").hidden = false;
  const link = $("#descargar-receta"); link.href = `/api/recetas/${encodeURIComponent(r.nombre)}.yaml`; link.hidden = false;
  $("#comando").textContent = r.comando; $("#ver-comando").disabled = false;
  say(`Receta «${r.nombre}» guardada. Calculando el plan (memoria y tiempo en este equipo)…`);
  await computePlan(false);
}
async function computePlan(measure) {
  const card = $("#plan"); card.hidden = false;
  card.replaceChildren(el("p", {}, measure ? "Midiendo pasos reales en este equipo (carga el modelo: un minuto o dos)…" : "Calculando el plan…"));
  card.setAttribute("aria-busy", "true");
  try {
    const p = (await api("POST", `/api/recetas/${encodeURIComponent(S.receta)}/plan${measure ? "?medir=1" : ""}`)).plan;
    showPlan(p);
  } catch (err) {
    card.replaceChildren(el("p", {class: "malo"}, "No se pudo calcular el plan: ", err.e ? `${err.e.codigo}: ${err.e.mensaje}` : String(err)));
    throw err;
  } finally { card.removeAttribute("aria-busy"); }
}
function showPlan(p) {
  const m = p.memory, t = p.time;
  const verdict = {cabe: "Cabe", justo: "Cabe justo", "no cabe": "No cabe"}[m.verdict] || m.verdict;
  const budget = Number($("#minutos").value) || 0;
  const total = t.total_seconds, capped = budget && total > budget * 60;
  const card = $("#plan");
  card.dataset.veredicto = m.verdict;
  card.replaceChildren(
    el("h3", {}, "Antes de empezar"),
    el("p", {id: "plan-veredicto", class: m.verdict === "no cabe" ? "malo" : "bueno"},
      `${verdict} en ${p.device.name}: hacen falta ≈ ${num(m.total_gb)} GiB de ${num(p.device.available_gb)} GiB disponibles.`),
    el("p", {id: "plan-tiempo"}, `≈ ${num(t.step_seconds)} s por paso${t.calibrated ? " (medido aquí)" : ""} × ${t.steps} pasos ≈ ${minutes(total)}` +
      (capped ? ` — con el tope de ${budget} min entrenará unos ${Math.floor(budget * 60 / t.step_seconds)} pasos (el ${Math.round(100 * budget * 60 / total)} % de lo planeado).` : ".")),
    p.suggestions.length ? el("ul", {}, p.suggestions.map((s) => el("li", {}, `${s.change} (ahorra ≈ ${num(s.saves_gb)} GiB)`))) : null,
    t.calibrated ? el("p", {class: "nota"}, "Medido en este equipo con pasos reales de esta receta.")
      : el("p", {class: "nota"}, "Estimación sin medir: el tiempo puede variar bastante. ",
        el("button", {type: "button", id: "medir-plan", onclick: () => guarded(() => computePlan(true))}, "Medir en este equipo (un minuto o dos)")));
  say(`Plan: ${verdict.toLowerCase()}, ≈ ${minutes(capped ? budget * 60 : total)}.`);
}

// --- jobs: start, watch (server-sent events with replay), stop, cancel -----------------------------------------------
async function startJob(body) {
  const job = await api("POST", "/api/trabajos", body);
  if (body.tipo === "entrenar" || body.tipo === "reanudar") { S.ejecucion = job.ejecucion; save(); }
  watch(job);
  return job;
}
const KIND = {entrenar: "Entrenamiento", reanudar: "Entrenamiento (reanudado)", evaluar: "Evaluación", exportar: "Exportación"};
const STATE = {en_curso: "en curso", terminado: "terminado", detenido: "detenido y guardado (reanudable)", cancelado: "cancelado",
  fallido: "falló", interrumpido: "interrumpido"};
function training(job) { return job && (job.tipo === "entrenar" || job.tipo === "reanudar"); }
function watch(job) {
  if (stream) stream.close();
  watched = job;
  if (training(job)) { points = []; byStep.clear(); drawChart(); $("#registro").textContent = ""; $("#lectura").textContent = ""; }
  $("#panel-trabajo").hidden = false;
  $("#error-trabajo").hidden = true;
  $("#barra").value = 0; $("#barra").removeAttribute("value"); $("#eta").textContent = "";
  showJob(job);
  stream = new EventSource(`/api/trabajos/${encodeURIComponent(job.id)}/eventos`);
  stream.addEventListener("estado", (e) => showJob(JSON.parse(e.data)));
  stream.addEventListener("paso", (e) => {
    const row = JSON.parse(e.data);
    if (!training(watched)) return;
    // A step can come twice (its training loss, then its held-out loss): merged by step. A replay of thousands of
    // steps arrives in a burst: the chart is drawn once per burst, not once per step.
    byStep.set(row.step, Object.assign(byStep.get(row.step) || {}, row));
    $("#lectura").textContent = row.lectura;
    if (!drawPending) { drawPending = true; setTimeout(() => { drawPending = false; points = [...byStep.values()].sort((a, b) => a.step - b.step); drawChart(); }, 50); }
  });
  stream.addEventListener("progreso", (e) => {
    const p = JSON.parse(e.data);
    const bar = $("#barra"); bar.max = p.total; bar.value = p.n;
    $("#eta").textContent = `${p.fase || "Progreso"}: ${p.n} de ${p.total}` + (p.eta_s !== null ? ` · quedan ≈ ${minutes(p.eta_s)}` : "") +
      (p.transcurrido_s !== null ? ` · llevas ${minutes(p.transcurrido_s)}` : "");
    const quarter = Math.floor(4 * p.n / Math.max(p.total, 1));
    if (quarter !== watched._quarter) { watched._quarter = quarter; if (quarter > 0 && quarter < 4) say(`${KIND[watched.tipo]}: ${quarter * 25} % hecho.`); }
  });
  stream.addEventListener("registro", (e) => {
    const r = JSON.parse(e.data), pre = $("#registro");
    const text = r.lineas.join("\n");
    if (r.reemplazar) pre.textContent = text ? text + "\n" : ""; else if (text) pre.textContent += text + "\n";
    pre.scrollTop = pre.scrollHeight;
  });
  stream.addEventListener("fin", (e) => { stream.close(); stream = null; finished(JSON.parse(e.data)); });
  // EventSource reconnects by itself (with Last-Event-ID: only the missed steps come back).
}
function showJob(job) {
  watched = Object.assign(watched || {}, job);
  $("#trabajo-nombre").textContent = `${KIND[job.tipo]} de «${job.ejecucion}»`;
  $("#panel-trabajo").dataset.trabajo = job.id;
  const st = $("#trabajo-estado"); st.textContent = STATE[job.estado] || job.estado; st.dataset.estado = job.estado;
  const running = job.estado === "en_curso";
  $("#detener").hidden = !(running && training(job));
  $("#detener").disabled = !!job.detener_pedido;
  if (job.detener_pedido && running) $("#eta").textContent = "Deteniendo al final del paso en curso y guardando…";
  $("#cancelar").hidden = !running;
  for (const b of ["#empezar", "#evaluar", "#reanudar"]) $(b).disabled = running;
  for (const b of $$(".exportar")) b.disabled = running;
}
function finished(job) {
  showJob(job);
  const bar = $("#barra");
  const took = job.fin && job.inicio ? ` en ${minutes(job.fin - job.inicio)}` : "";
  if (job.estado === "terminado") { bar.max = 1; bar.value = 1; $("#eta").textContent = `Terminado${took}.`; }
  else if (job.estado === "detenido") $("#eta").textContent = `Detenido y guardado${took}: «Reanudar» sigue desde aquí.`;
  const words = {terminado: "terminó", detenido: "se detuvo y guardó lo aprendido: puedes evaluarlo, exportarlo o reanudarlo", cancelado: "se canceló", fallido: "falló", interrumpido: "se interrumpió"};
  say(`${KIND[job.tipo]} de «${job.ejecucion}» ${words[job.estado] || job.estado}.`);
  if (job.error) {
    $("#error-trabajo").hidden = false;
    $("#error-texto").textContent = `Causa: ${job.error.codigo ? job.error.codigo + ": " : ""}${job.error.mensaje}`;
    $("#error-siguiente").textContent = job.error.sugerencia ? `Qué hacer: ${job.error.sugerencia}` : "";
  }
  $("#reanudar").disabled = !(training(job) && ["detenido", "cancelado", "fallido", "interrumpido"].includes(job.estado));
  if (job.tipo === "evaluar") showEvaluation();
  if (job.tipo === "exportar") showExports();
}
async function copyDiagnostics() {
  const text = await api("GET", `/api/trabajos/${encodeURIComponent(watched.id)}/diagnostico`);
  const area = $("#diagnostico"); area.value = text; area.hidden = false;
  try { await navigator.clipboard.writeText(text); say("Diagnóstico copiado: pégalo donde pidas ayuda."); }
  catch { area.select(); say("Diagnóstico seleccionado: cópialo con Ctrl+C."); }
}

// --- the loss chart: inline SVG, no library ------------------------------------------------------------------------
function drawChart() {
  const svg = $("#grafica"), W = 640, H = 240, pad = 36;
  const train = points.filter((p) => typeof p.loss === "number" && Number.isFinite(p.loss));
  const evals = points.filter((p) => typeof p.eval_loss === "number");
  svg.dataset.puntos = String(train.length);
  const keep = svg.querySelector("title");
  svg.replaceChildren(keep);
  if (!train.length && !evals.length) { keep.textContent = "Pérdida por paso (aún sin datos)"; return; }
  const all = [...train.map((p) => p.loss), ...evals.map((p) => p.eval_loss)];
  const lo = Math.min(...all), hi = Math.max(...all), span = (hi - lo) || 1;
  const maxStep = Math.max(...points.map((p) => p.step), 1);
  const x = (s) => pad + (W - 2 * pad) * s / maxStep, y = (v) => H - pad - (H - 2 * pad) * (v - lo) / span;
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; svg.append(n); return n; };
  add("line", {x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: "eje"});
  add("line", {x1: pad, y1: pad, x2: pad, y2: H - pad, class: "eje"});
  add("text", {x: 2, y: pad + 4, class: "etiqueta"}, num(hi));
  add("text", {x: 2, y: H - pad, class: "etiqueta"}, num(lo));
  add("text", {x: W - pad - 60, y: H - 8, class: "etiqueta"}, `paso ${maxStep}`);
  if (train.length) add("polyline", {points: train.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "), class: "linea-entrenamiento"});
  for (const p of evals) add("circle", {cx: x(p.step), cy: y(p.eval_loss), r: 4, class: "punto-validacion"});
  const last = train[train.length - 1];
  keep.textContent = last ? `Pérdida de entrenamiento: de ${num(train[0].loss)} a ${num(last.loss)} en ${last.step} pasos` : "Pérdida de validación";
}

// --- 4. Evaluar -----------------------------------------------------------------------------------------------------
async function showEvaluation() {
  const box = $("#resumen-evaluacion");
  if (!S.ejecucion) { box.replaceChildren(el("p", {}, "Entrena primero (paso 3) o elige una ejecución en «Ejecuciones».")); return; }
  let run;
  try { run = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}`); } catch (err) { showError(err); return; }
  $("#resumen-imprimible").href = `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/resumen`;
  $("#resumen-imprimible").hidden = !["terminada", "detenida"].includes(run.estado);
  const ev = run.evaluacion;
  $("#empezar-valoracion").disabled = !ev;
  $("#abrir-informe").hidden = !ev;
  if (!ev) { box.replaceChildren(el("p", {}, `«${S.ejecucion}» aún no tiene evaluación.`)); return; }
  $("#abrir-informe").href = `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/informe`;
  const g = ev.generacion || {}, rows = [
    ["Pérdida en preguntas apartadas (menos es mejor)", num(ev.perdida.base, 3), num(ev.perdida.tuned, 3)],
    ["Respuestas que terminan solas", pct(g.base && g.base.stop_rate), pct(g.tuned && g.tuned.stop_rate)],
    ["Repetición (menos es mejor)", num(g.base && g.base.repetition), num(g.tuned && g.tuned.repetition)],
    ["Parecido a la referencia (chrF)", num(g.base && g.base.chrf, 3), num(g.tuned && g.tuned.chrf, 3)],
  ];
  for (const [name, d] of Object.entries(ev.comprobaciones || {})) rows.push([`Comprobaciones «${name}»`, pct(d.base), pct(d.tuned)]);
  const table = el("table", {id: "tabla-evaluacion"}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, "Base"), el("th", {scope: "col"}, "Afinado"))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("th", {scope: "row"}, r[0]), el("td", {}, r[1]), el("td", {}, r[2])))));
  const f = ev.olvido || {};
  box.replaceChildren(el("p", {}, `${ev.preguntas} preguntas apartadas, respondidas por ambos:`), table,
    el("p", {class: f.flagged ? "malo" : ""}, `Español general: pérdida ×${num(f.ratio)} respecto al base — ${f.flagged ? "ha olvidado español general (baja épocas o tasa de aprendizaje)" : "sin olvido apreciable"}.`));
  if (run.valoracion) $("#resultado-valoracion").textContent = run.valoracion.texto;
}
async function startRating() {
  const r = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/valoracion`);
  const box = $("#valoracion");
  box.replaceChildren();
  if (!r.preguntas_visibles) box.append(el("p", {class: "malo"}, "La evaluación no guardó las preguntas: vuelve a evaluar con «Guardar el texto de las preguntas» marcado."));
  for (const p of r.pares) {
    const card = el("fieldset", {class: "par", "data-indice": p.indice},
      el("legend", {}, `Pregunta ${p.indice + 1} de ${r.pares.length}`),
      el("p", {class: "pregunta"}, p.pregunta || "(pregunta no guardada)"),
      el("div", {class: "respuestas"},
        el("div", {}, el("h4", {}, "Respuesta A"), el("p", {class: "respuesta"}, p.a)),
        el("div", {}, el("h4", {}, "Respuesta B"), el("p", {class: "respuesta"}, p.b))));
    const choices = el("p", {class: "acciones"});
    for (const [value, label] of [["a", "Mejor la A"], ["b", "Mejor la B"], ["igual", "Iguales"]]) {
      const b = el("button", {type: "button", class: "elegir", "data-eleccion": value, "aria-pressed": String(p.eleccion === value)}, label);
      b.addEventListener("click", () => guarded(async () => {
        const res = await api("POST", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/valoracion`, {indice: p.indice, eleccion: value});
        for (const o of choices.querySelectorAll("button")) o.setAttribute("aria-pressed", String(o === b));
        say(`Valoradas ${res.valoradas} de ${res.total}.`);
        if (res.resultado) { $("#resultado-valoracion").textContent = res.resultado.texto; say(res.resultado.texto); }
      }));
      choices.append(b);
    }
    card.append(choices);
    box.append(card);
  }
  if (r.resultado) $("#resultado-valoracion").textContent = r.resultado.texto;
}

// --- 5. Exportar ----------------------------------------------------------------------------------------------------
async function showExports() {
  const box = $("#exportaciones");
  if (!S.ejecucion) { box.replaceChildren(el("p", {}, "Entrena primero o elige una ejecución.")); return; }
  let run;
  try { run = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}`); } catch (err) { showError(err); return; }
  const ex = run.exportaciones.exportaciones, failed = run.exportaciones.no_escritos;
  const parts = [];
  for (const [key, item] of Object.entries(ex)) {
    parts.push(el("div", {class: "exportacion", "data-formato": key}, el("h4", {}, `${key}: ${item.ruta} (${(item.bytes / 1048576).toFixed(1)} MB) ✓ comprobado`),
      item.uso.map((u) => [el("p", {}, u.etiqueta + ":"), el("pre", {class: "uso"}, u.texto)])));
  }
  for (const [key, f] of Object.entries(failed)) parts.push(el("p", {class: "malo"}, `${key}: no se escribió — ${f.codigo}: ${f.motivo}`));
  if (parts.length) parts.unshift(el("p", {}, "Las rutas son relativas a la carpeta del estudio: ", el("code", {}, CONFIG.carpeta)));
  box.replaceChildren(...(parts.length ? parts : [el("p", {}, "Aún no hay exportaciones de esta ejecución.")]));
  refreshServer();
}
async function refreshServer() {
  const s = await api("GET", "/api/servidor");
  $("#servidor").checked = s.estado !== "apagado" && s.estado !== "fallido";
  const text = {apagado: "Apagado.", arrancando: `Arrancando «${s.ejecucion}»…`, listo: `Listo: API en ${s.api} (compatible con OpenAI), chat en ${s.url}`,
    fallido: `No arrancó: ${s.error ? (s.error.codigo ? s.error.codigo + ": " : "") + s.error.mensaje : ""}`}[s.estado];
  $("#servidor-estado").textContent = text; $("#chat-estado").textContent = text;
  return s;
}
async function waitServer() {
  for (let i = 0; i < 240; i++) {
    const s = await refreshServer();
    if (s.estado !== "arrancando") return s;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return refreshServer();
}
async function switchServer(on) {
  if (on && !S.ejecucion) throw new ApiError({mensaje: "elige primero una ejecución"});
  await api("POST", "/api/servidor", {ejecucion: S.ejecucion, encender: on});
  return on ? waitServer() : refreshServer();
}
async function openChat() {
  let s = await refreshServer();
  if (s.estado !== "listo" || s.ejecucion !== S.ejecucion) s = await switchServer(true);
  if (s.estado === "listo") { const f = $("#chat"); f.src = s.url; f.hidden = false; say("Chat abierto."); }
}

// --- Ejecuciones ----------------------------------------------------------------------------------------------------
const RUN_STATE = {en_curso: "en curso", terminada: "terminada", detenida: "detenida (reanudable)", incompleta: "incompleta", fallida: "fallida", cancelada: "cancelada", nueva: "sin entrenar"};
function spark(values) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 100 24"); svg.setAttribute("class", "chispa"); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", values.length ? `pérdida de ${num(values[0])} a ${num(values[values.length - 1])}` : "sin datos");
  if (values.length > 1) {
    const lo = Math.min(...values), hi = Math.max(...values), span = (hi - lo) || 1;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", values.map((v, i) => `${(100 * i / (values.length - 1)).toFixed(1)},${(22 - 20 * (v - lo) / span).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}
async function loadRuns() {
  const r = await api("GET", "/api/ejecuciones");
  const body = $("#lista-ejecuciones tbody");
  body.replaceChildren(...r.ejecuciones.map((e) => el("tr", {"data-ejecucion": e.nombre},
    el("td", {}, el("input", {type: "checkbox", class: "marcar", value: e.nombre, "aria-label": `comparar ${e.nombre}`})),
    el("th", {scope: "row"}, e.nombre), el("td", {class: "estado-ejecucion"}, RUN_STATE[e.estado] || e.estado),
    el("td", {}, new Date(e.fecha * 1000).toLocaleString("es")), el("td", {}, minutes(e.duracion_s)),
    el("td", {}, num(e.perdida_final, 3)), el("td", {}, spark(e.chispa)),
    el("td", {}, el("button", {type: "button", class: "abrir", onclick: () => guarded(() => openRun(e.nombre))}, "Abrir")))));
  if (!r.ejecuciones.length) body.append(el("tr", {}, el("td", {colSpan: 8}, "Aún no hay ejecuciones.")));
  for (const c of $$(".marcar")) c.addEventListener("change", () => { $("#comparar").disabled = $$(".marcar:checked").length !== 2; });
  $("#comparar").disabled = true;
}
async function openRun(name) {
  const r = await api("GET", `/api/ejecuciones/${encodeURIComponent(name)}`);
  S.ejecucion = name; save();
  const box = $("#detalle-ejecucion");
  box.replaceChildren(el("h3", {}, `«${name}»: ${RUN_STATE[r.estado] || r.estado}`),
    el("p", {class: "acciones"},
      el("button", {type: "button", onclick: () => go("evaluar")}, "Evaluar"),
      el("button", {type: "button", onclick: () => go("exportar")}, "Exportar"),
      el("button", {type: "button", onclick: () => go("usar")}, "Usar"),
      r.ultimo_trabajo ? el("button", {type: "button", onclick: () => { watch(r.ultimo_trabajo); go(training(r.ultimo_trabajo) ? "entrenar" : "ejecuciones"); }}, "Ver el último trabajo") : null),
    el("h4", {}, "Receta"), el("pre", {}, r.receta || "(sin receta)"),
    el("h4", {}, "Salidas"), el("ul", {}, r.salidas.map((s) => el("li", {}, `${s.nombre} (${(s.bytes / 1048576).toFixed(1)} MB)`))),
    el("h4", {}, "Registro del último trabajo"), el("pre", {class: "registro"}, r.registro.join("\n")));
  say(`Ejecución «${name}» elegida.`);
}
async function compare() {
  const [a, b] = $$(".marcar:checked").map((c) => c.value);
  const r = await api("GET", `/api/comparar?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const row = (label, f) => el("tr", {}, el("th", {scope: "row"}, label), el("td", {}, f(r.a)), el("td", {}, f(r.b)));
  const evalOf = (x, k) => x.evaluacion ? num(x.evaluacion.perdida[k], 3) : "—";
  $("#comparacion").replaceChildren(el("h3", {}, `«${a}» frente a «${b}»`),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, a), el("th", {scope: "col"}, b))),
      el("tbody", {}, row("Estado", (x) => RUN_STATE[x.estado] || x.estado), row("Pasos", (x) => x.pasos),
        row("Pérdida final", (x) => num(x.perdida_final, 3)), row("Pérdida evaluada (afinado)", (x) => evalOf(x, "tuned")),
        row("Duración", (x) => minutes(x.duracion_s)), row("Curva", (x) => spark(x.chispa)))),
    el("h4", {}, "Diferencias en la receta"),
    r.diferencias.length ? el("table", {}, el("tbody", {}, r.diferencias.map((d) => el("tr", {}, el("th", {scope: "row"}, d.clave), el("td", {}, JSON.stringify(d.a)), el("td", {}, JSON.stringify(d.b))))))
      : el("p", {}, "Las recetas son iguales."));
}

// --- start ------------------------------------------------------------------------------------------------------------
async function init() {
  CONFIG = await api("GET", "/api/estado");
  $("#incluido").replaceChildren(...Object.entries(CONFIG.datos_incluidos).map(([k, v]) => el("option", {value: k}, v.etiqueta)));
  $("#plantilla").replaceChildren(...CONFIG.plantillas.map((t) => el("option", {value: t}, t)));
  $("#preajustes").replaceChildren(...Object.entries(CONFIG.preajustes).map(([k, v], i) =>
    el("label", {class: "opcion"}, el("input", {type: "radio", name: "preajuste", value: k, checked: i === 0}), ` ${v.etiqueta} — `, el("small", {}, v.ayuda))));
  $("#comprobaciones").replaceChildren(...Object.entries(CONFIG.comprobaciones).map(([k, v]) =>
    el("label", {class: "opcion"}, el("input", {type: "checkbox", name: "comprobacion", value: k}), ` ${v}`)));
  $("#botones-exportar").replaceChildren(...CONFIG.formatos.map((f) => el("button", {type: "button", class: "exportar", "data-formato": f}, `Exportar ${f}`)));
  for (const b of $$(".exportar")) b.addEventListener("click", () => guarded(() => {
    if (!S.ejecucion) throw new ApiError({mensaje: "elige primero una ejecución"});
    return startJob({tipo: "exportar", ejecucion: S.ejecucion, formato: b.dataset.formato});
  }));
  for (const r of $$("input[name=preajuste]")) r.addEventListener("change", fillPreset);
  fillPreset();
  await loadDatasets();
  showContext();
  if (CONFIG.trabajo) watch(CONFIG.trabajo);
  else if (S.ejecucion) {
    const last = await api("GET", "/api/trabajos").catch(() => null);
    const mine = last && last.trabajos.filter((j) => j.ejecucion === S.ejecucion).pop();
    if (mine) watch(mine);
  }
  go((location.hash || "#datos").slice(1) in {datos: 1, modelo: 1, entrenar: 1, evaluar: 1, exportar: 1, usar: 1, ejecuciones: 1} ? location.hash.slice(1) || "datos" : "datos");
  document.body.dataset.listo = "1";
  say("Estudio listo.");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of $$("nav button")) b.addEventListener("click", () => go(b.dataset.paso));
  for (const b of $$(".siguiente")) b.addEventListener("click", () => go(b.dataset.ir));
  $("#subir").addEventListener("click", () => guarded(upload));
  $("#usar-incluido").addEventListener("click", () => guarded(() => useDataset("afinar:" + $("#incluido").value, $("#incluido").selectedOptions[0].textContent)));
  $("#usar-subido").addEventListener("click", () => guarded(() => $("#subidos").value ? useDataset($("#subidos").value, $("#subidos").value) : null));
  $("#ver-informe").addEventListener("click", () => guarded(dataReport));
  $("#ver-ejemplos").addEventListener("click", () => guarded(examples));
  $("#base").addEventListener("change", () => { $("#base-otra").disabled = $("#base").value !== "otra"; });
  $("#guardar-receta").addEventListener("click", () => guarded(saveRecipe));
  $("#ver-comando").addEventListener("click", () => { const c = $("#comando"); c.hidden = !c.hidden; $("#ver-comando").setAttribute("aria-expanded", String(!c.hidden)); });
  $("#empezar").addEventListener("click", () => guarded(() => {
    if (!S.receta) throw new ApiError({mensaje: "guarda primero la receta (paso 2)"});
    return startJob({tipo: "entrenar", receta: S.receta, sobrescribir: $("#sobrescribir").checked});
  }));
  $("#reanudar").addEventListener("click", () => guarded(() => startJob({tipo: "reanudar", ejecucion: S.ejecucion})));
  $("#detener").addEventListener("click", () => guarded(async () => { showJob(await api("POST", `/api/trabajos/${encodeURIComponent(watched.id)}/detener`)); say("Deteniendo: termina el paso en curso y guarda."); }));
  $("#cancelar").addEventListener("click", () => $("#confirmar-cancelar").showModal());
  $("#confirmar-cancelar").addEventListener("close", () => {
    if ($("#confirmar-cancelar").returnValue === "si") guarded(async () => { showJob(await api("POST", `/api/trabajos/${encodeURIComponent(watched.id)}/cancelar`)); say("Cancelando…"); });
  });
  $("#copiar-diagnostico").addEventListener("click", () => guarded(copyDiagnostics));
  $("#evaluar").addEventListener("click", () => guarded(() => {
    if (!S.ejecucion) throw new ApiError({mensaje: "entrena primero o elige una ejecución"});
    return startJob({tipo: "evaluar", ejecucion: S.ejecucion, preguntas: parseInt($("#preguntas").value, 10) || 5, mostrar_preguntas: $("#mostrar-preguntas").checked});
  }));
  $("#empezar-valoracion").addEventListener("click", () => guarded(startRating));
  $("#servidor").addEventListener("change", (e) => guarded(() => switchServer(e.target.checked)));
  $("#abrir-chat").addEventListener("click", () => guarded(openChat));
  $("#comparar").addEventListener("click", () => guarded(compare));
  init().catch(showError);
});
