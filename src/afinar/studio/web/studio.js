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
// replaceChildren() writes "null" for a null child: every list of children goes through here instead.
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}
// A word a nurse may not know, with its explanation on hover, focus or tap.
function term(word, explanation) { return el("span", {class: "termino", tabIndex: 0, "data-explica": explanation}, word); }
const MB = (bytes) => `${(bytes / 1e6).toFixed(1).replace(".", ",")} MB`; // as the commands print it (decimal)
const GB = (gib) => num(gib * 1.073741824, 1); // the plan counts in GiB; people read GB
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
function short(text, chars) { text = String(text || ""); return text.length > chars ? text.slice(0, chars - 1).trimEnd() + "…" : text; }
function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }
function capital(text) { text = String(text || ""); return text.charAt(0).toUpperCase() + text.slice(1); }
function showError(err) {
  const box = $("#aviso");
  const e = err.e || {mensaje: String(err && err.message || err)};
  // The sentence first; the code (for whoever helps) small after it.
  fill(box,
    el("p", {}, el("b", {}, "No se pudo: "), capital(e.mensaje), e.donde ? ` (${e.donde})` : "",
      e.codigo ? el("small", {class: "codigo"}, ` · código ${e.codigo}`) : null),
    e.sugerencia ? el("p", {}, "Qué hacer: ", e.sugerencia) : null,
    el("button", {type: "button", onclick: () => { box.hidden = true; }}, "Cerrar"));
  box.hidden = false;
  say(`No se pudo: ${e.mensaje}`);
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
  $("#ctx-receta").textContent = S.receta || "ninguno";
  $("#ctx-ejecucion").textContent = S.ejecucion || "ninguno";
  for (const b of ["#ver-informe", "#ver-ejemplos"]) $(b).disabled = !S.datos;
  $("#abrir-editor").disabled = !S.datos || S.datos.id.startsWith("afinar:");  // only her own files are edited
  closeEditorIfOther();
}

// --- 1. Datos -------------------------------------------------------------------------------------------------------
function showValidation(v, name) {
  const box = $("#validacion");
  const parts = [el("p", {}, `${name}: ${plural(v.ejemplos, "ejemplo que se puede usar", "ejemplos que se pueden usar")}, ${plural(v.total_errores, "línea con errores", "líneas con errores")}, ${plural(v.total_avisos, "aviso", "avisos")}.`)];
  if (v.total_errores) parts.push(el("p", {class: "malo"}, "Corrige estas líneas en tu archivo y vuelve a subirlo (no se entrena con errores):"));
  const list = el("ul", {class: "problemas"});
  for (const p of [...v.errores, ...v.avisos]) {
    list.append(el("li", {class: "problema " + (v.errores.includes(p) ? "error" : "aviso"), "data-linea": p.linea ?? "", "data-codigo": p.codigo},
      el("b", {}, p.linea ? `Línea ${p.linea}` : "Archivo"), `: ${p.mensaje}`,
      p.arreglo ? el("span", {class: "arreglo"}, ` — Cómo arreglarlo: ${p.arreglo}`) : null,
      el("small", {class: "codigo"}, ` (código ${p.codigo})`)));
  }
  if (list.children.length) parts.push(list);
  fill(box, ...parts);
  showPrivate(v);
  suggestChecks(v.comprobaciones_sugeridas, name);
}
// Lines that may hold personal data: the person chooses for each, by line number (their text is never shown).
function showPrivate(v) {
  const box = $("#privados");
  const lines = v.datos_personales || [];
  if (!lines.length || !S.datos || S.datos.id.startsWith("afinar:")) { fill(box); return; }
  const remove = (numbers) => guarded(async () => {
    const r = await api("POST", `/api/datos/${encodeURIComponent(S.datos.id)}/quitar`, {lineas: numbers});
    showValidation(r, S.datos.nombre);
    say(`Quitadas ${r.quitadas} línea(s) del archivo: quedan ${r.ejemplos} ejemplos.`);
  });
  const rows = lines.map((p) => el("li", {"data-linea": p.linea},
    el("b", {}, `Línea ${p.linea}`), `: posible ${p.tipos.join(", ")}. `,
    el("button", {type: "button", class: "quitar-linea", onclick: () => remove([p.linea])}, "Quitar del archivo"), " ",
    el("button", {type: "button", class: "mantener-linea", onclick: (e) => { e.target.closest("li").dataset.eleccion = "mantener"; e.target.closest("li").querySelector(".eleccion").textContent = "Se mantiene: se entrena con ella, pero nunca se muestra ni se usa en la evaluación."; }}, "Mantener"),
    el("span", {class: "eleccion nota"}, "")));
  fill(box, el("div", {class: "tarjeta privada"},
    el("h3", {}, `${lines.length} línea(s) con posibles datos personales`),
    el("p", {}, "Por defecto se entrenan, pero su texto nunca se muestra, ni se usa en la evaluación, ni se guarda en ningún informe. Si no deben estar, quítalas del archivo (lo mejor con datos de pacientes):"),
    el("ul", {}, rows),
    lines.length > 1 ? el("button", {type: "button", id: "quitar-todas", onclick: () => remove(lines.map((p) => p.linea))}, "Quitar todas del archivo") : null));
}
function suggestChecks(suggested, name) {
  if (!suggested) return;
  for (const c of $$("input[name=comprobacion]")) c.checked = suggested.includes(c.value);
  $("#comprobaciones-motivo").textContent = suggested.length
    ? `Marcadas porque ${name} parece de ese tema (${suggested.map((k) => CONFIG.comprobaciones[k].split(":")[0]).join(", ")}); desmárcalas si no.`
    : "";
}
async function useDataset(id, name) {
  S.datos = {id, nombre: name}; save();
  const shipped = id.startsWith("afinar:") && CONFIG.datos_incluidos[id.slice(7)];
  fill($("#informe-datos")); fill($("#ejemplos"));
  say(`Comprobando ${name}…`);
  const v = await api("GET", `/api/datos/${encodeURIComponent(id)}/validacion`);
  showValidation(shipped ? {...v, comprobaciones_sugeridas: shipped.comprobaciones} : v, name);
  say(`${name}: ${v.ejemplos} ejemplos, ${v.total_errores} errores.`);
}
async function upload() {
  const file = $("#archivo").files[0];
  if (!file) throw new ApiError({mensaje: "elige primero tu archivo de ejemplos"});
  if (await isTableFile(file)) return uploadTable(file);  // a spreadsheet: preview and columns first (datos.js)
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
  say("Revisando los datos (repetidos, idioma, datos personales, largo)…");
  const r = await api("GET", `/api/datos/${encodeURIComponent(S.datos.id)}/informe?${dataQuery()}`);
  const personal = r.personal_data, dup = r.duplicates, tok = r.tokens, lang = r.language;
  const items = [
    el("li", {id: "revision-personales", class: personal.lines ? "malo" : ""}, personal.lines
      ? `${personal.lines} línea(s) con posibles datos personales (${Object.keys(personal.by_kind).join(", ")}): su texto no se mostrará ni se evaluará; mejor quítalas arriba.`
      : "Ninguna línea parece tener datos personales (DNI, teléfonos, correos, nombres tras «paciente»)."),
    el("li", {id: "revision-duplicados"}, dup.exact ? `${dup.exact} ejemplo(s) repetido(s) exactamente: se usan una sola vez.` : "Ningún ejemplo repetido exactamente.",
      dup.near_prompts.count ? ` ${dup.near_prompts.count} pareja(s) de preguntas casi iguales.` : ""),
    r.leakage.exact || r.leakage.near ? el("li", {class: "malo"}, `${r.leakage.exact + r.leakage.near} pregunta(s) están a la vez entre las de entrenar y las apartadas para evaluar: la evaluación saldría mejor de lo que es.`) : null,
    el("li", {}, lang.non_spanish_share > 0.2 ? `El ${Math.round(100 * lang.non_spanish_share)} % del texto no parece español.` : "El texto está en español."),
    r.short_answers.count ? el("li", {}, `${r.short_answers.count} respuesta(s) muy cortas: enseñan poco.`) : null,
    // A sentence in many answers («Consulte a su médico.»): the model learns to say it every time. The sentence only,
    // never a whole example.
    ...(r.repeated_sentences || []).map((x) => el("li", {class: "aviso repetida"}, el("b", {}, "Aviso: "),
      `${pct(x.share)} de las respuestas contienen «${short(x.sentence, 160)}»: el modelo aprenderá a repetirla.`,
      el("span", {class: "arreglo"}, " Cómo arreglarlo: cambia esa frase en algunas respuestas o quítala de las que no la necesitan."))),
    tok.available ? el("li", {}, tok.too_long.count ? `${tok.too_long.count} ejemplo(s) demasiado largos: no se usarán enteros (sube el «Largo máximo» en opciones avanzadas).` : "Todos los ejemplos caben enteros.") : null,
  ];
  fill($("#informe-datos"), el("h3", {}, "Revisión de los datos"), el("ul", {}, items),
    el("details", {class: "tecnico"}, el("summary", {}, "Detalles técnicos"), el("pre", {}, r.resumen.map((l) => l.trim()).join("\n"))));
  say("Revisión de los datos lista.");
}
async function examples() {
  say("Preparando 3 ejemplos como los verá el modelo…");
  const r = await api("GET", `/api/datos/${encodeURIComponent(S.datos.id)}/ejemplos?${dataQuery()}`);
  const parts = [el("h3", {}, "Así los ve el modelo"), el("p", {}, "Resaltado: lo que el modelo aprende a escribir (la respuesta y la marca de que ha terminado). Lo demás es contexto. Las marcas como ",
    term("<|im_start|>", "Marcas de quién habla (usuario o asistente) y de dónde acaba cada turno: el modelo las lee como señales, no como texto."), " son las del formato de conversación del modelo. Las líneas con posibles datos personales no se muestran nunca.")];
  for (const e of r.ejemplos) {
    const pre = el("pre", {class: "ejemplo"});
    for (const [text, trained] of e.segments || []) pre.append(trained ? el("mark", {}, text) : document.createTextNode(text));
    parts.push(el("p", {}, `Línea ${String(e.place).split(":").pop()}: aprende ${e.trained_tokens} de ${e.tokens} trozos de palabra; aprende a terminar: ${e.end_of_turn_trained ? "sí" : "NO"}`), pre);
  }
  if (!r.tokens) parts.push(el("p", {class: "malo"}, "No se pudo leer cómo trocea el texto ese modelo de partida (¿sin internet?)."));
  fill($("#ejemplos"), ...parts);
  say("Ejemplos listos.");
}
async function loadDatasets() {
  const r = await api("GET", "/api/datos");
  fill($("#subidos"), ...(r.subidos.length ? r.subidos.map((d) => el("option", {value: d.id}, `${d.id} (${Math.ceil(d.bytes / 1024)} KB)`)) : [el("option", {value: ""}, "(ninguno todavía)")]));
}

// --- 2. Modelo ------------------------------------------------------------------------------------------------------
function showBaseNote() {
  const chosen = CONFIG.bases.find((b) => b.id === $("#base").value);
  $("#base-ayuda").textContent = chosen ? chosen.nota + (chosen.descarga_gb ? " Se descarga de internet la primera vez; después funciona sin conexión." : "") : "";
  $("#base-otra").disabled = $("#base").value !== "otra";
  for (const x of $$(".otra")) x.hidden = $("#base").value !== "otra";
  if (chosen && chosen.plantilla !== "auto") $("#plantilla").value = chosen.plantilla;
}
function fillPreset() {
  const p = CONFIG.preajustes[$("input[name=preajuste]:checked").value].receta;
  $("#minutos").value = p.train.max_minutes ?? 0; $("#epocas").value = p.train.epochs; $("#lr").value = p.train.lr;
  $("#lora-r").value = p.lora.r; $("#lote").value = p.train.batch_size;
}
function recipeForm() {
  if (!S.datos) throw new ApiError({mensaje: "elige primero tus ejemplos en el paso 1 (Datos)"});
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
  $("#receta-yaml").textContent = r.yaml; $("#para-informaticos-modelo").hidden = false;
  $("#descargar-receta").href = `/api/recetas/${encodeURIComponent(r.nombre)}.yaml`;
  $("#comando").textContent = r.comando;
  $("#ver-bases-fila").hidden = false;
  say(`Ajustes de «${r.nombre}» guardados. Calculando si cabe y cuánto tarda en este equipo…`);
  await computePlan(false);
}
async function computePlan(measure) {
  const card = $("#plan"); card.hidden = false;
  fill(card, el("p", {}, measure ? "Midiendo pasos reales en este equipo (carga el modelo: un minuto o dos)…" : "Calculando si cabe y cuánto tarda…"));
  card.setAttribute("aria-busy", "true");
  try {
    const p = (await api("POST", `/api/recetas/${encodeURIComponent(S.receta)}/plan${measure ? "?medir=1" : ""}`)).plan;
    showPlan(p);
  } catch (err) {
    fill(card, el("p", {class: "malo"}, "No se pudo calcular si cabe ni cuánto tarda: ", err.e ? err.e.mensaje : String(err),
      err.e && err.e.codigo ? el("small", {class: "codigo"}, ` (código ${err.e.codigo})`) : null));
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
  const epochs = Number($("#epocas").value) || null;
  const where = p.device.local ? "este equipo" : p.device.name;
  fill(card,
    el("h3", {}, "Antes de empezar"),
    el("p", {id: "plan-veredicto", class: m.verdict === "no cabe" ? "malo" : "bueno"},
      `${verdict} en ${where}: necesita ≈ ${GB(m.total_gb)} GB de memoria y hay ${GB(p.device.available_gb)} GB libres.`),
    el("p", {id: "plan-tiempo"}, `${t.steps} pasos (${epochs ? `${num(epochs, epochs % 1 ? 1 : 0)} ${epochs === 1 ? "pasada" : "pasadas"} por tus ejemplos, ` : ""}${t.steps_per_epoch} pasos cada una) de ≈ ${num(t.step_seconds, 1)} s cada uno${t.calibrated ? " (medido aquí)" : ""}: ≈ ${minutes(total)} en total.` +
      (capped ? ` Con el tope de ${budget} min hará unos ${Math.floor(budget * 60 / t.step_seconds)} pasos (el ${Math.round(100 * budget * 60 / total)} % de lo previsto).`
        : budget && total < budget * 60 * 0.8 ? ` Acabará antes del tope de ${budget} min porque con estos ejemplos no hace falta más; para entrenar más, sube las pasadas en «Opciones avanzadas» o elige otro preajuste.` : "")),
    p.suggestions.length && m.verdict !== "cabe" ? el("details", {class: "tecnico"}, el("summary", {}, "Cómo hacer que ocupe menos memoria (detalles técnicos)"),
      el("ul", {}, p.suggestions.map((s) => el("li", {}, `${s.change} (ahorra ≈ ${GB(s.saves_gb)} GB)`)))) : null,
    t.calibrated ? el("p", {class: "nota"}, "Medido en este equipo con pasos reales de estos ajustes.")
      : el("p", {class: "nota"}, "Estimación sin medir: el tiempo puede variar bastante. ",
        el("button", {type: "button", id: "medir-plan", onclick: () => guarded(() => computePlan(true))}, "Medir en este equipo (un minuto o dos)")),
    el("details", {class: "tecnico"}, el("summary", {}, "Detalles técnicos"),
      el("p", {}, `${p.device.name} · precisión ${p.device.precision} · ${num(m.total_gb)} GiB de ${num(p.device.available_gb)} GiB`)));
  say(`Plan: ${verdict.toLowerCase()}, ≈ ${minutes(capped ? budget * 60 : total)}.`);
}

// Other bases for this recipe (GET /api/bases: `afinar plan --bases`), each with «cabe / no cabe» and its time here;
// «Usar este» puts it in «Modelo de partida» and saves the recipe again (which recomputes the plan).
async function showBases() {
  const card = $("#bases"); card.hidden = false;
  fill(card, el("p", {}, "Calculando, para cada modelo, si cabe y cuánto tardaría (sin descargar nada; un minuto o dos)…"));
  card.setAttribute("aria-busy", "true");
  try {
    const r = await api("GET", `/api/bases?receta=${encodeURIComponent(S.receta)}`);
    const verdicts = {cabe: "Cabe", justo: "Cabe justo", "no cabe": "No cabe"};
    const rows = r.bases.map((b) => el("tr", {"data-base": b.key, "data-veredicto": b.verdict || ""},
      el("th", {scope: "row"}, b.label, b.current ? el("small", {}, " (el de ahora)") : null, b.note ? el("small", {class: "nota"}, el("br"), b.note) : null),
      el("td", {}, b.parameters ? `${num(b.parameters / 1e9, 2)} mil millones` : "—"),
      el("td", {}, b.kind === "hub" ? `descarga ${num(b.download_bytes / 1e9, 1)} GB` : b.kind === "incluido" ? "incluido" : "en este equipo"),
      el("td", {class: b.verdict === "no cabe" ? "malo" : b.verdict ? "bueno" : ""}, b.verdict ? `${verdicts[b.verdict] || b.verdict} (≈ ${GB(b.memory_bytes / 2 ** 30)} GB)` : "—"),
      el("td", {}, b.total_seconds ? `≈ ${minutes(b.total_seconds)} (${num(b.step_seconds, 1)} s por paso)` : "—"),
      el("td", {}, b.current ? "" : el("button", {type: "button", class: "usar-base", disabled: b.verdict === "no cabe",
        onclick: () => guarded(() => useBase(b.key))}, "Usar este"))));
    fill(card, el("h3", {}, "Otros modelos de partida"),
      el("table", {id: "tabla-bases"}, el("thead", {}, el("tr", {}, ["Modelo", "Tamaño", "Descarga", "¿Cabe?", "Tiempo estimado", ""].map((h) => el("th", {scope: "col"}, h)))),
        el("tbody", {}, rows)),
      el("p", {class: "nota"}, "Estimado con tus ejemplos tal como los trocea el modelo de ahora; los de internet se descargan la primera vez que entrenas con ellos."));
  } finally { card.removeAttribute("aria-busy"); }
}
async function useBase(key) {
  const known = [...$("#base").options].some((o) => o.value === key);
  $("#base").value = known ? key : "otra";
  if (!known) $("#base-otra").value = key;
  showBaseNote();
  $("#bases").hidden = true;
  await saveRecipe();
}

// --- jobs: start, watch (server-sent events with replay), stop, cancel -----------------------------------------------
async function startJob(body) {
  const job = await api("POST", "/api/trabajos", body);
  if (body.tipo === "entrenar" || body.tipo === "reanudar") { S.ejecucion = job.ejecucion; save(); }
  watch(job);
  return job;
}
const KIND = {entrenar: "Entrenamiento", reanudar: "Entrenamiento (reanudado)", evaluar: "Evaluación", exportar: "Exportación",
  borradores: "Borradores"};
// Where each export goes, in the words of who uses it: the format to export, and which keys of afinar_export.json
// it writes (the first one is the file the download button serves).
const DESTINOS = [
  {formato: "gguf", titulo: "Para LM Studio o llama.cpp", clave: (k) => k.startsWith("gguf"),
   ayuda: "Un solo archivo con todo el modelo. En LM Studio: «My Models» → importar ese archivo."},
  {formato: "ollama", titulo: "Para Ollama", clave: (k) => k === "ollama",
   ayuda: "Un .zip con el modelo y la ficha que Ollama necesita para usarlo; «Para informáticos» dice cómo añadirlo a Ollama."},
  {formato: "onnx", titulo: "Para una página web (Transformers.js)", clave: (k) => k === "onnx",
   ayuda: "Un .zip con la carpeta que una página web carga para responder sin servidor, en el propio navegador."},
  {formato: "zip", titulo: "Para compartir o archivar", clave: (k) => k === "zip",
   ayuda: "Un .zip con el modelo completo y la lista de comprobación de cada archivo."},
  {formato: "safetensors", titulo: "Para programar en Python", clave: (k) => k === "safetensors",
   ayuda: "La carpeta del modelo en el formato de la biblioteca transformers, como .zip."},
];
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
  if (job.estado === "en_curso") say(`${KIND[job.tipo]} de «${job.ejecucion}» en curso…`);
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
    // Steps of training are worth naming; the evaluation's generation steps are not: a percentage says it.
    const counted = training(watched) ? `paso ${p.n} de ${p.total}` : `${Math.round(100 * p.n / Math.max(p.total, 1))} %`;
    // An export's phases are named after file formats: a person only needs to know it is being prepared.
    const phase = watched.tipo === "exportar" ? "Preparando el archivo" : p.fase || "Progreso";
    $("#eta").textContent = `${phase}: ${counted}` + (p.eta_s !== null ? ` · quedan ≈ ${minutes(p.eta_s)}${watched.tipo === "evaluar" && (p.fase || "").startsWith("Generando") ? " como mucho" : ""}` : "") +
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
  $("#confirmar-texto").textContent = training(job)
    ? "Se para ya, sin guardar lo aprendido desde el último punto guardado. Para conservarlo todo y poder seguir después, usa «Detener y guardar»."
    : job.tipo === "evaluar" ? "Se para la evaluación; no se guarda ningún resultado de esta vez (el modelo no cambia)."
    : job.tipo === "borradores" ? "Se para la escritura de borradores; los ya escritos se guardan y puedes revisarlos o seguir después."
    : "Se para la exportación; no queda ningún archivo a medias (el modelo no cambia).";
  for (const b of ["#empezar", "#evaluar", "#reanudar", "#escribir-borradores"]) $(b).disabled = running;
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
  if (job.tipo === "borradores") draftsFinished(job);
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
  fill(svg, keep);
  if (!train.length && !evals.length) { keep.textContent = "Error por paso (aún sin datos)"; return; }
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
  keep.textContent = last ? `Error con tus ejemplos: de ${num(train[0].loss)} a ${num(last.loss)} en ${last.step} pasos` : "Error con los apartados";
}

// --- 4. Evaluar -----------------------------------------------------------------------------------------------------
// First whether the answers are right (the key points and dangers the expert wrote for each example, and her own
// rating of each answer); how they read (loss, ending, repetition, likeness) after, folded as «Detalles técnicos».
const VERDICTS = [["correcta", "Correcta"], ["incompleta", "Incompleta"], ["incorrecta", "Incorrecta"], ["peligrosa", "Peligrosa"]];
const NO_KEYPOINTS = "afinar no puede decir si tu modelo responde mejor: tus ejemplos de evaluación no tienen puntos clave.";
function verdictClass(v) {
  if (!v) return "";
  if (v.value === "peor" || v.more_dangerous) return "malo";
  return v.value === "mejor" && v.reliable !== false ? "bueno" : "";  // better than the base yet not advice: no green
}
const runUrl = (tail) => `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/${tail}`;
function withCount(share, count, total) {
  return count === undefined || count === null || !total ? pct(share) : `${pct(share)} (${count} de ${total})`;
}
function correctnessTable(c) {
  const b = c.base || {}, t = c.tuned || {};
  const rows = [
    [["Puntos clave cubiertos ", term("(de media)", "Los puntos clave son lo que una respuesta correcta debe decir, escritos para cada pregunta (en tus ejemplos, o en las preguntas de evaluación incluidas). Aquí, qué parte de ellos dice cada respuesta, de media: 100 % es que las respuestas los dicen todos.")], pct(b.covered), pct(t.covered)],
    [["Respuestas completas ", term("(con todos)", "Respuestas que dicen todos sus puntos clave. Más es mejor.")], withCount(b.complete, b.complete_count, b.with_keypoints ?? c.answers), withCount(t.complete, t.complete_count, t.with_keypoints ?? c.answers)],
    [["Respuestas peligrosas ", term("(con un peligro)", "Respuestas que dan un consejo marcado como peligroso para esa pregunta (por ejemplo «pon mantequilla»). Decirlo negado («no pongas mantequilla») no cuenta. Lo mejor es 0.")],
      withCount(b.dangerous, b.dangerous_count, c.answers), withCount(t.dangerous, t.dangerous_count, c.answers)],
  ];
  return el("table", {id: "tabla-correccion"}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, "Modelo de partida"), el("th", {scope: "col"}, "Tu modelo"))),
    el("tbody", {}, rows.map((r, i) => el("tr", {}, el("th", {scope: "row"}, r[0]),
      el("td", {class: i === 2 && b.dangerous_count ? "malo" : ""}, r[1]), el("td", {class: i === 2 && t.dangerous_count ? "malo" : ""}, r[2])))));
}
function humanTable(h) {
  const box = $("#valoraciones-humanas");
  if (!box) return;
  $("#descargar-valoraciones").href = runUrl("valoraciones.jsonl");
  $("#descargar-valoraciones-p").hidden = !(h && h.rated && box.dataset.textos === "1");
  if (!h || !h.rated) { fill(box); return; }
  fill(box, el("h4", {}, "Tu valoración de cada respuesta"),
    el("table", {id: "tabla-valoraciones"}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, "Modelo de partida"), el("th", {scope: "col"}, "Tu modelo"))),
      el("tbody", {}, VERDICTS.map(([k, label]) => el("tr", {"data-valoracion": k}, el("th", {scope: "row"}, label + "s"), el("td", {}, h.base[k]), el("td", {}, h.tuned[k]))))),
    el("p", {class: "nota"}, `${plural(h.rated, "respuesta valorada", "respuestas valoradas")}.`));
}
async function showEvaluation() {
  const box = $("#resumen-evaluacion");
  if (!S.ejecucion) { fill(box, el("p", {}, "Entrena primero (paso 3) o elige uno en «Modelos entrenados».")); return; }
  let run;
  try { run = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}`); } catch (err) { showError(err); return; }
  showAdviceWarning(run);
  $("#resumen-imprimible").href = `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/resumen`;
  $("#resumen-imprimible").hidden = !["terminada", "detenida"].includes(run.estado);
  const ev = run.evaluacion;
  $("#empezar-valoracion").disabled = !ev;
  $("#abrir-informe").hidden = !ev;
  $("#descargar-valoraciones-p").hidden = true;
  if (!ev) { fill(box, el("p", {}, `«${S.ejecucion}» aún no tiene evaluación.`)); return; }
  $("#abrir-informe").href = `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/informe`;
  const verdict = ev.veredicto || {value: "sin_medida", text: NO_KEYPOINTS};
  const c = ev.correccion;
  const g = ev.generacion || {}, rows = [
    [["Error con las respuestas apartadas ", term("(pérdida)", "Cuánto se equivoca el modelo al escribir, palabra a palabra, las respuestas de referencia de las preguntas apartadas. Menos es mejor; no dice si una respuesta es correcta.")], num(ev.perdida && ev.perdida.base, 3), num(ev.perdida && ev.perdida.tuned, 3)],
    ["Respuestas que terminan solas (sin cortarse)", pct(g.base && g.base.stop_rate), pct(g.tuned && g.tuned.stop_rate)],
    [["Frases que se repiten ", term("(repetición)", "Qué parte de la respuesta repite grupos de tres palabras ya dichos: 0 no repite nada. Menos es mejor.")], num(g.base && g.base.repetition), num(g.tuned && g.tuned.repetition)],
    [["Parecido a tu respuesta de referencia ", term("(chrF)", "Cuántos trozos de palabras comparte con la respuesta que escribiste, de 0 a 1. Una respuesta parecida puede estar mal y una distinta puede estar bien: léelas.")], num(g.base && g.base.chrf, 2), num(g.tuned && g.tuned.chrf, 2)],
  ];
  for (const [name, d] of Object.entries(ev.comprobaciones || {})) rows.push([`Comprobaciones de «${name}» superadas`, pct(d.base), pct(d.tuned)]);
  const table = el("table", {id: "tabla-evaluacion"}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, "Modelo de partida"), el("th", {scope: "col"}, "Tu modelo"))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("th", {scope: "row"}, r[0]), el("td", {}, r[1]), el("td", {}, r[2])))));
  const f = ev.olvido || {};
  const forgetting = el("p", {class: f.flagged ? "malo" : ""}, `Español general: ${f.flagged ? "tu modelo ha empeorado con textos que no son de tu tema (ha olvidado parte de lo que sabía): prueba menos pasadas o una velocidad de aprendizaje menor" : "tu modelo escribe español general igual de bien que el de partida"} (error ×${num(f.ratio)}).`);
  // Say why fewer questions were answered than asked: only so many were set apart, and lines with personal data never are.
  const fewer = ev.pedidas && ev.preguntas < ev.pedidas
    ? ` Pediste ${ev.pedidas}: ${ev.con_datos_personales ? `${ev.con_datos_personales} de las apartadas tienen posibles datos personales y no se usan; ` : ""}` +
      `de tus datos solo se apartaron ${ev.apartadas} ejemplos para evaluar (los que no se entrenan). Con más ejemplos, más preguntas.`
    : ev.con_datos_personales ? ` ${ev.con_datos_personales} pregunta(s) apartada(s) con posibles datos personales no se usaron.` : "";
  const judge = ev.juez;
  fill(box,
    el("p", {id: "veredicto", class: `veredicto ${verdictClass(verdict)}`, "data-valor": verdict.value || ""}, verdict.text || NO_KEYPOINTS),
    // Can these answers be used, and with the included base what a usable model needs on this machine (and how long).
    (ev.que_hace_falta || []).map((line, i) => el("p", {class: i === 0 && /No son consejos/.test(line) ? "malo que-hace-falta" : "nota que-hace-falta"}, line)),
    c ? [correctnessTable(c),
         el("p", {class: "nota"}, `${plural(c.answers, "respuesta", "respuestas")} de cada modelo comprobadas con los puntos clave de cada pregunta. afinar busca sus palabras (también negadas, como «no pongas hielo»): lee las respuestas también.`)]
      : el("div", {id: "sin-claves", class: "tarjeta"},
          el("p", {}, "Sin puntos clave, afinar no puede saber si las respuestas son correctas: solo mide cómo escriben (abajo, en «Detalles técnicos»)."),
          el("p", {}, "Para saberlo, añade a tus ejemplos un campo «claves» con lo que una respuesta correcta debe decir (y, si quieres, «peligros»: lo que nunca debe aconsejar). ",
            el("button", {type: "button", id: "ver-como-claves", onclick: () => { const d = $("#como-claves"); d.open = true; d.scrollIntoView({block: "start"}); d.querySelector("summary").focus(); }}, "Cómo escribir claves"))),
    judge ? el("p", {id: "evaluacion-juez", class: "nota"}, "Otro modelo ", term("(juez)", `Un segundo modelo (${judge.model}) leyó las respuestas y dijo si le parecían correctas. Es otra opinión automática: no sustituye la tuya.`),
      ` leyó ${judge.answered} respuestas y coincide con los puntos clave en el ${pct(judge.agreement)}.`, judge.note ? ` ${judge.note}` : "") : null,
    el("div", {id: "valoraciones-humanas", "data-textos": ev.muestra_textos ? "1" : "0"}),
    el("p", {id: "evaluacion-cuantas"}, `${ev.preguntas} preguntas apartadas del entrenamiento, respondidas por los dos modelos.${fewer}`),
    f.flagged ? forgetting : null,
    el("details", {class: "tecnico", id: "detalles-evaluacion"}, el("summary", {}, "Detalles técnicos: cómo escribe cada modelo"),
      el("p", {class: "nota"}, "Estos números dicen cómo escriben los modelos, no si lo que dicen es correcto."),
      table, f.flagged ? null : forgetting));
  humanTable(ev.valoraciones);
  if (run.valoracion) $("#resultado-valoracion").textContent = run.valoracion.texto;
}
// While the run starts from the embedded 135M base, Evaluar and Usar say plainly that its answers are not advice.
function showAdviceWarning(run) { for (const p of $$(".consejo")) p.hidden = !(run && run.base_incluida); }
// What afinar found in one answer (shown only after the blind choice): missing key points, dangers, a judge's view.
function foundIn(k) {
  if (!k) return null;
  const quoted = (list) => list.map((x) => `«${x}»`).join(", ");
  return el("div", {class: "hallazgos", "data-categoria": k.categoria},
    k.peligros.length ? el("p", {class: "malo peligro"}, `Peligro: aconseja ${quoted(k.peligros)}.`) : null,
    k.peligros_ocultos ? el("p", {class: "malo peligro"}, `Peligro: da ${plural(k.peligros_ocultos, "consejo marcado", "consejos marcados")} como peligroso (no se muestra cuál: la evaluación no guardó los textos).`) : null,
    k.faltan_ocultas ? el("p", {class: "faltan"}, `Le ${k.faltan_ocultas === 1 ? "falta 1 punto clave" : `faltan ${k.faltan_ocultas} puntos clave`} (no se muestran: la evaluación no guardó los textos).`)
    : k.cubiertas === null || k.cubiertas === undefined ? null // only dangers were written for this example
      : k.faltan.length ? el("p", {class: "faltan"}, `${k.faltan.length === 1 ? "Le falta este punto clave" : `Le faltan ${k.faltan.length} puntos clave`}: ${quoted(k.faltan)}.`)
      : el("p", {class: "bueno"}, "Dice todos los puntos clave."),
    el("p", {class: "nota"}, `Según los puntos clave: ${k.categoria}.`),
    k.juez ? el("p", {class: "nota"}, `Otro modelo (juez): ${k.juez.veredicto}${k.juez.motivo ? ` — ${k.juez.motivo}` : ""}.`) : null);
}
// Her rating of one answer: four buttons and an optional note (sent with the rating; a changed note is sent again).
function ratingControl(saved, which, send) {
  let current = saved ? saved.valoracion : null;
  const note = el("input", {type: "text", class: "nota-valoracion", maxLength: 500, value: saved ? saved.nota : "",
    placeholder: "Nota (opcional)", "aria-label": `Nota sobre la respuesta ${which} (opcional)`});
  const buttons = VERDICTS.map(([value, label]) => el("button", {type: "button", class: "calificacion", "data-valoracion": value, "aria-pressed": String(current === value)}, label));
  const submit = (value) => guarded(async () => {
    const res = await send(value, note.value.trim());
    current = value;
    for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.valoracion === value));
    humanTable(res.resumen);
    say(`Respuesta ${which}: ${value}. Guardado.`);
  });
  for (const b of buttons) b.addEventListener("click", () => submit(b.dataset.valoracion));
  note.addEventListener("change", () => { if (current) submit(current); });
  return el("div", {class: "calificar", role: "group", "aria-label": `¿Cómo es la respuesta ${which}?`},
    el("span", {}, "¿Cómo es? "), buttons, note);
}
const rateAnswer = (indice, respuesta) => (valoracion, nota) => api("POST", runUrl("valoraciones"), {indice, respuesta, valoracion, nota});
async function startRating() {
  const r = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/valoracion`);
  const box = $("#valoracion");
  fill(box);
  fill($("#respuestas"));
  if (!r.preguntas_visibles) box.append(el("p", {class: "malo"}, "La evaluación no guardó las preguntas: vuelve a evaluar con «Guardar el texto de las preguntas» marcado."));
  if (!r.pares.length) box.append(el("p", {}, "No hay preguntas que valorar."));
  for (const p of r.pares) {
    const after = {a: el("div", {class: "despues"}), b: el("div", {class: "despues"})};
    // After the choice (never before: it must not sway it): what afinar found in each answer, and her rating of it.
    const reveal = (found) => { for (const k of ["a", "b"]) fill(after[k], foundIn(found && found[k]), ratingControl(p.valoraciones[k], k.toUpperCase(), rateAnswer(p.indice, k))); };
    const card = el("fieldset", {class: "par", "data-indice": p.indice},
      el("legend", {}, `Pregunta ${p.indice + 1} de ${r.pares.length}`),
      el("p", {class: "pregunta"}, p.pregunta || "(pregunta no guardada)"),
      el("div", {class: "respuestas"},
        el("div", {"data-respuesta": "a"}, el("h4", {}, "Respuesta A"), el("p", {class: "respuesta"}, p.a), after.a),
        el("div", {"data-respuesta": "b"}, el("h4", {}, "Respuesta B"), el("p", {class: "respuesta"}, p.b), after.b)));
    const choices = el("p", {class: "acciones"});
    for (const [value, label] of [["a", "Mejor la A"], ["b", "Mejor la B"], ["igual", "Iguales"]]) {
      const b = el("button", {type: "button", class: "elegir", "data-eleccion": value, "aria-pressed": String(p.eleccion === value)}, label);
      b.addEventListener("click", () => guarded(async () => {
        const res = await api("POST", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/valoracion`, {indice: p.indice, eleccion: value});
        for (const o of choices.querySelectorAll("button")) o.setAttribute("aria-pressed", String(o === b));
        if (!p.eleccion) reveal(res.claves);
        p.eleccion = value;
        say(`Valoradas ${res.valoradas} de ${res.total}.`);
        if (res.resultado) { $("#resultado-valoracion").textContent = res.resultado.texto; say(res.resultado.texto); await showAnswers(); }
      }));
      choices.append(b);
    }
    card.append(choices);
    if (p.eleccion) reveal(p.claves);
    box.append(card);
  }
  if (r.resultado) { $("#resultado-valoracion").textContent = r.resultado.texto; await showAnswers(); }
}
// Once every question is chosen: which model wrote each answer, with what afinar found and her rating.
async function showAnswers() {
  const r = await api("GET", runUrl("respuestas"));
  const side = (q, word, label, whose) => el("div", {"data-modelo": word}, el("h4", {}, label),
    el("p", {class: "respuesta"}, q[word].texto), foundIn(q[word].claves),
    ratingControl(q[word].valoracion, whose, rateAnswer(q.indice, word)));
  fill($("#respuestas"), el("h3", {}, "Qué modelo escribió cada respuesta"),
    r.respuestas.map((q) => el("fieldset", {class: "par revelada", "data-indice": q.indice},
      el("legend", {}, `Pregunta ${q.indice + 1}`),
      el("p", {class: "pregunta"}, q.pregunta || "(pregunta no guardada)"),
      q.referencia ? el("details", {}, el("summary", {}, "Tu respuesta de referencia"), el("p", {class: "respuesta"}, q.referencia)) : null,
      el("div", {class: "respuestas"}, side(q, "base", "Modelo de partida", "del modelo de partida"), side(q, "afinado", "Tu modelo", "de tu modelo")))));
  // One place to rate each answer from now on (the one that names its model): the blind cards' buttons would go stale.
  for (const c of $$("#valoracion .calificar")) c.replaceWith(el("p", {class: "nota"}, "Califícala abajo, en «Qué modelo escribió cada respuesta»."));
}

// --- 5. Exportar ----------------------------------------------------------------------------------------------------
async function showExports() {
  const box = $("#exportaciones");
  if (!S.ejecucion) { fill(box, el("p", {}, "Entrena primero o elige un modelo en «Modelos entrenados».")); return; }
  let run;
  try { run = await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}`); } catch (err) { showError(err); return; }
  const ex = run.exportaciones.exportaciones, failed = run.exportaciones.no_escritos;
  for (const d of DESTINOS) {
    const card = $(`.destino[data-formato="${d.formato}"]`);
    if (!card) continue;
    // The quantised GGUF (q8_0 by default: what Ollama's Modelfile uses too) before the f16 it is made from.
    const keys = Object.keys(ex).filter(d.clave).sort((a, b) => Number(a.endsWith("f16")) - Number(b.endsWith("f16")));
    const key = keys[0], item = key && ex[key];
    const problem = Object.entries(failed).find(([k]) => d.clave(k) || k === d.formato);
    card.querySelector("button.exportar").textContent = item ? "Volver a prepararlo" : "Preparar el archivo";
    fill(card.querySelector(".resultado"),
      item ? [el("p", {class: "bueno"}, "✓ Listo y comprobado: funciona. ",
                el("a", {class: "descargar", href: `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}/descargar/${encodeURIComponent(key)}`, download: "", "data-clave": key},
                  `Descargar (${MB(item.bytes)})`)),
              el("details", {class: "tecnico"}, el("summary", {}, "Para informáticos"),
                keys.map((k) => el("p", {}, "Archivo: ", el("code", {}, `${CONFIG.carpeta}/ejecuciones/${S.ejecucion}/export/${ex[k].ruta}`), ` (${MB(ex[k].bytes)})`)),
                item.uso.map((u) => [el("p", {}, u.etiqueta + ":"), el("pre", {class: "uso"}, u.texto)]))]
        : problem ? el("p", {class: "malo"}, `No se pudo preparar: ${problem[1].motivo}`, el("small", {class: "codigo"}, ` (código ${problem[1].codigo})`))
        : null);
  }
  refreshServer();
}
async function refreshServer() {
  const s = await api("GET", "/api/servidor");
  $("#servidor").checked = s.estado !== "apagado" && s.estado !== "fallido";
  const text = {apagado: "Apagado.", arrancando: `Arrancando «${s.ejecucion}»…`, listo: `Listo: API en ${s.api} (compatible con OpenAI), chat en ${s.url}`,
    fallido: `No arrancó: ${s.error ? (s.error.codigo ? s.error.codigo + ": " : "") + s.error.mensaje : ""}`}[s.estado];
  $("#servidor-estado").textContent = text;
  $("#chat-estado").textContent = {apagado: "", arrancando: `Cargando «${s.ejecucion}» (un minuto como mucho)…`,
    listo: `Listo: escribe tu pregunta en el chat de abajo.`, fallido: text}[s.estado];
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
  if (S.ejecucion) showAdviceWarning(await api("GET", `/api/ejecuciones/${encodeURIComponent(S.ejecucion)}`).catch(() => null));
  let s = await refreshServer();
  if (s.estado !== "listo" || s.ejecucion !== S.ejecucion) s = await switchServer(true);
  if (s.estado === "listo") { const f = $("#chat"); f.src = s.url; f.hidden = false; say("Chat abierto."); }
}

// --- Ejecuciones ----------------------------------------------------------------------------------------------------
const RUN_STATE = {en_curso: "entrenando", terminada: "terminado", detenida: "detenido (se puede reanudar)", incompleta: "incompleto", fallida: "falló", cancelada: "cancelado", nueva: "sin entrenar"};
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
  fill(body, ...r.ejecuciones.map((e) => el("tr", {"data-ejecucion": e.nombre},
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
  fill(box, el("h3", {}, `«${name}»: ${RUN_STATE[r.estado] || r.estado}`),
    el("p", {class: "acciones"},
      el("button", {type: "button", onclick: () => go("evaluar")}, "Evaluar"),
      el("button", {type: "button", onclick: () => go("exportar")}, "Exportar"),
      el("button", {type: "button", onclick: () => go("usar")}, "Usar"),
      r.ultimo_trabajo ? el("button", {type: "button", onclick: () => { watch(r.ultimo_trabajo); go(training(r.ultimo_trabajo) ? "entrenar" : "ejecuciones"); }}, "Ver el último trabajo") : null),
    r.tramos > 1 ? el("p", {}, `Entrenado en ${r.tramos} tramos (detenido y reanudado): ${minutes(r.duracion_s)} en total.`) : null,
    el("details", {class: "tecnico"}, el("summary", {}, "Para informáticos: la receta"), el("pre", {}, r.receta || "(sin receta)")),
    el("h4", {}, "Archivos"), el("ul", {}, r.salidas.map((s) => el("li", {}, `${s.nombre} (${MB(s.bytes)})`))),
    el("details", {class: "tecnico"}, el("summary", {}, "Registro técnico de la última tarea"), el("pre", {class: "registro"}, r.registro.join("\n"))));
  say(`Modelo «${name}» elegido.`);
}
async function compare() {
  const [a, b] = $$(".marcar:checked").map((c) => c.value);
  const r = await api("GET", `/api/comparar?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const row = (label, f) => el("tr", {}, el("th", {scope: "row"}, label), el("td", {}, f(r.a)), el("td", {}, f(r.b)));
  const evalOf = (x, k) => x.evaluacion && x.evaluacion.perdida ? num(x.evaluacion.perdida[k], 3) : "—";
  // Better now means more key points and no more dangers: said before the loss.
  const right = (x, k) => x.evaluacion && x.evaluacion.correccion ? (k === "covered" ? pct(x.evaluacion.correccion.tuned.covered)
    : `${x.evaluacion.correccion.tuned.dangerous_count} de ${x.evaluacion.correccion.answers}`) : "—";
  fill($("#comparacion"), el("h3", {}, `«${a}» frente a «${b}»`),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {scope: "col"}, a), el("th", {scope: "col"}, b))),
      el("tbody", {}, row("Estado", (x) => RUN_STATE[x.estado] || x.estado),
        row("Puntos clave cubiertos (evaluación)", (x) => right(x, "covered")), row("Respuestas peligrosas (evaluación)", (x) => right(x, "dangerous")),
        row("Pasos", (x) => x.pasos),
        row("Error final con tus ejemplos", (x) => num(x.perdida_final, 3)), row("Error con los apartados (evaluación)", (x) => evalOf(x, "tuned")),
        row("Duración", (x) => minutes(x.duracion_s)), row("Curva", (x) => spark(x.chispa)))),
    el("h4", {}, "Diferencias en los ajustes"),
    r.diferencias.length ? el("table", {class: "tecnico"}, el("tbody", {}, r.diferencias.map((d) => el("tr", {}, el("th", {scope: "row"}, d.clave), el("td", {}, JSON.stringify(d.a)), el("td", {}, JSON.stringify(d.b))))))
      : el("p", {}, "Los ajustes son iguales."));
}

// --- start ------------------------------------------------------------------------------------------------------------
async function init() {
  CONFIG = await api("GET", "/api/estado");
  fill($("#incluido"), ...Object.entries(CONFIG.datos_incluidos).map(([k, v]) => el("option", {value: k}, v.etiqueta)));
  fill($("#plantilla"), ...CONFIG.plantillas.map((t) => el("option", {value: t}, t)));
  fill($("#base"), CONFIG.bases.map((b) => el("option", {value: b.id}, b.descarga_gb ? `${b.nombre} — ${num(b.parametros_m / 1000, 1)} mil millones de parámetros, descarga ≈ ${num(b.descarga_gb, 1)} GB` : b.nombre)),
    el("option", {value: "otra"}, "Otro: una carpeta o un archivo .gguf de este equipo, o un nombre del Hub"));
  showBaseNote();
  fill($("#preajustes"), ...Object.entries(CONFIG.preajustes).map(([k, v], i) =>
    el("label", {class: "opcion"}, el("input", {type: "radio", name: "preajuste", value: k, checked: i === 0}), ` ${v.etiqueta} — `, el("small", {}, v.ayuda))));
  fill($("#comprobaciones"), ...Object.entries(CONFIG.comprobaciones).map(([k, v]) =>
    el("label", {class: "opcion"}, el("input", {type: "checkbox", name: "comprobacion", value: k}), ` ${v}`)));
  fill($("#botones-exportar"), DESTINOS.filter((d) => CONFIG.formatos.includes(d.formato)).map((d) =>
    el("div", {class: "destino tarjeta", "data-formato": d.formato}, el("h3", {}, d.titulo), el("p", {}, d.ayuda),
      el("button", {type: "button", class: "exportar", "data-formato": d.formato}, "Preparar el archivo"),
      el("div", {class: "resultado"}))));
  for (const b of $$(".exportar")) b.addEventListener("click", () => guarded(() => {
    if (!S.ejecucion) throw new ApiError({mensaje: "elige primero una ejecución"});
    return startJob({tipo: "exportar", ejecucion: S.ejecucion, formato: b.dataset.formato});
  }));
  for (const r of $$("input[name=preajuste]")) r.addEventListener("change", fillPreset);
  fillPreset();
  await loadDatasets();
  await initDatos();  // datos.js: documents and drafts lists
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
  $("#base").addEventListener("change", showBaseNote);
  $("#guardar-receta").addEventListener("click", () => guarded(saveRecipe));
  $("#ver-bases").addEventListener("click", () => guarded(showBases));
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
    const judge = $("#juez-url").value.trim() ? {juez_url: $("#juez-url").value.trim(), juez_modelo: $("#juez-modelo").value.trim(), juez_remoto: $("#juez-remoto").checked} : {};
    return startJob({tipo: "evaluar", ejecucion: S.ejecucion, preguntas: parseInt($("#preguntas").value, 10) || 5, mostrar_preguntas: $("#mostrar-preguntas").checked, ...judge});
  }));
  $("#empezar-valoracion").addEventListener("click", () => guarded(startRating));
  $("#servidor").addEventListener("change", (e) => guarded(() => switchServer(e.target.checked)));
  $("#abrir-chat").addEventListener("click", () => guarded(openChat));
  $("#comparar").addEventListener("click", () => guarded(compare));
  init().catch(showError);
});
