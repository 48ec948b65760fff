// afinar estudio, step 1 (Datos): spreadsheets (preview and columns), the table editor of an uploaded file, and
// drafts from documents with their review queue. Plain JavaScript loaded after studio.js (its helpers: $, el, fill,
// api, say, guarded, showValidation, loadDatasets, watch, S, save).
"use strict";

const TABLE_SUFFIXES = [".csv", ".tsv", ".xlsx", ".ods", ".parquet", ".json"];
const FIELD_LABELS = {pregunta: "Pregunta", respuesta: "Respuesta", contexto: "Contexto (opcional)",
  sistema: "Instrucciones fijas (opcional)", claves: "Puntos clave (opcional)", peligros: "Peligros (opcional)"};
const EDITABLE = ["pregunta", "respuesta", "contexto", "sistema"];
function isTable(name) { const n = String(name).toLowerCase(); return !n.endsWith(".jsonl") && TABLE_SUFFIXES.some((s) => n.endsWith(s)); }
// A .json is a table when it is one array ([{…}, {…}]); a .json with one object per line is a JSONL by another name.
async function isTableFile(file) {
  if (!isTable(file.name)) return false;
  if (!file.name.toLowerCase().endsWith(".json")) return true;
  return (await file.slice(0, 4096).text()).replace(/^\uFEFF/, "").trimStart().startsWith("[");
}
function fileHeaders(file) { return {headers: {"X-Nombre-Archivo": encodeURIComponent(file.name), "Content-Type": "application/octet-stream"}}; }
function checkSize(file) {
  if (CONFIG && file.size > CONFIG.max_subida_mb * 1048576)
    throw new ApiError({codigo: "E013", mensaje: `«${file.name}» ocupa más de ${CONFIG.max_subida_mb} MB, el límite del estudio`});
}

// --- spreadsheets: upload → preview with the detected columns (editable) → «Usar estas columnas» ---------------------
let TABLE = null;
async function uploadTable(file) {
  checkSize(file);
  say(`Subiendo ${file.name}…`);
  const r = await api("POST", "/api/tablas", file, fileHeaders(file));
  showTable(r);
  say(`${file.name}: ${plural(r.total_filas, "fila", "filas")}. Comprueba qué columna es cada cosa y pulsa «Usar estas columnas».`);
}
function showTable(r) {
  TABLE = Object.assign(TABLE && TABLE.tabla === r.tabla ? TABLE : {}, r);
  $("#tabla-vista").hidden = false;
  $("#tabla-mensaje").textContent = r.mapeo_error
    ? `No se sabe con seguridad qué columna es cada cosa (${r.mapeo_error}). Elige abajo al menos la columna de la pregunta y la de la respuesta.`
    : "Estas son las columnas que se han reconocido: cámbialas si no son las correctas.";
  $("#tabla-mensaje").className = r.mapeo_error ? "malo" : "";
  $("#tabla-hoja-fila").hidden = (r.hojas || []).length < 2;
  fill($("#tabla-hoja"), (r.hojas || []).map((h) => el("option", {value: h}, h)));
  if (r.hoja) $("#tabla-hoja").value = r.hoja;
  fill($("#tabla-campos"), r.campos.map((f) => {
    const select = el("select", {id: `columna-${f}`, class: "columna", "data-campo": f},
      el("option", {value: ""}, "— ninguna —"), r.columnas.map((c) => el("option", {value: c}, c)));
    select.value = (r.mapeo || {})[f] || "";
    return [el("label", {htmlFor: `columna-${f}`}, FIELD_LABELS[f] || f), select];
  }));
  const head = el("tr", {}, el("th", {scope: "col"}, "Fila"), r.columnas.map((c) => el("th", {scope: "col"}, c)));
  fill($("#tabla-filas"), el("thead", {}, head),
    el("tbody", {}, r.filas.map((row) => el("tr", {}, el("th", {scope: "row"}, String(row.fila)),
      r.columnas.map((c) => el("td", {}, row.celdas[c] ?? ""))))));
}
async function changeSheet() {
  const r = await api("GET", `/api/tablas/${encodeURIComponent(TABLE.tabla)}?hoja=${encodeURIComponent($("#tabla-hoja").value)}`);
  showTable(r);
  say(`Hoja «${r.hoja}»: ${plural(r.total_filas, "fila", "filas")}.`);
}
async function useColumns() {
  if (!TABLE) throw new ApiError({mensaje: "sube primero tu hoja de cálculo"});
  const columnas = {};
  for (const s of $$("#tabla-campos select.columna")) columnas[s.dataset.campo] = s.value || null;
  say("Convirtiendo la tabla en ejemplos y comprobándolos…");
  const r = await api("POST", `/api/tablas/${encodeURIComponent(TABLE.tabla)}/usar`, {hoja: TABLE.hoja || null, columnas});
  const name = TABLE.nombre + (TABLE.hojas && TABLE.hojas.length > 1 ? ` (hoja ${r.hoja})` : "");
  S.datos = {id: r.id, nombre: name}; save();
  showValidation(r.validacion, name);
  if (r.total_descartadas) {
    $("#validacion").append(el("p", {class: "malo", id: "filas-descartadas"},
      `${plural(r.total_descartadas, "fila no se ha usado", "filas no se han usado")}: `,
      r.filas_descartadas.slice(0, 10).map((p) => `fila ${p.fila} (${p.mensaje})`).join("; "),
      r.total_descartadas > 10 ? "…" : ".", " Corrígelas en tu hoja o aquí abajo, en la tabla."));
  }
  $("#tabla-vista").hidden = true;
  await loadDatasets();
  say(`${name}: ${plural(r.ejemplos, "ejemplo guardado", "ejemplos guardados")}, ${plural(r.validacion.total_errores, "línea con errores", "líneas con errores")}.`);
}

// --- the table editor: one page of rows at a time; her changes are kept across pages until «Guardar» ---------------
const ED = {id: null, page: 1, pages: 1, total: 0, version: null, edits: new Map(), deleted: new Set(), added: [], nextKey: 1};
// Another dataset chosen: the table of the previous one is closed (its unsaved changes go with it).
function closeEditorIfOther() {
  if (ED.id && (!S.datos || S.datos.id !== ED.id)) { $("#editor-zona").hidden = true; Object.assign(ED, {id: null, edits: new Map(), deleted: new Set(), added: []}); }
}
function pending() { return ED.edits.size + ED.deleted.size + ED.added.length; }
function showPending() {
  const n = pending();
  $("#editor-pendientes").textContent = n ? `${plural(n, "cambio sin guardar", "cambios sin guardar")}: pulsa «Guardar los cambios».` : "Sin cambios pendientes.";
}
async function openEditor(page = 1) {
  if (!S.datos || S.datos.id.startsWith("afinar:")) throw new ApiError({mensaje: "elige o sube primero tu propio archivo: los ejemplos incluidos no se editan"});
  if (ED.id !== S.datos.id) Object.assign(ED, {id: S.datos.id, nombre: S.datos.nombre, edits: new Map(), deleted: new Set(), added: [], version: null});
  const r = await api("GET", `/api/datos/${encodeURIComponent(ED.id)}/filas?pagina=${page}`);
  if (ED.version && r.version !== ED.version && pending()) {
    Object.assign(ED, {edits: new Map(), deleted: new Set(), added: []});
    say("El archivo cambió mientras tanto: se han descartado los cambios sin guardar.");
  }
  Object.assign(ED, {version: r.version, page: r.pagina, pages: r.paginas, total: r.total});
  $("#editor-zona").hidden = false;
  $("#editor-pagina").textContent = `Página ${r.pagina} de ${r.paginas} (${plural(r.total, "ejemplo", "ejemplos")})`;
  $("#editor-anterior").disabled = r.pagina <= 1;
  $("#editor-siguiente").disabled = r.pagina >= r.paginas;
  fill($("#editor-tabla tbody"), r.filas.map(editorRow), ED.added.map(newRow));
  showPending();
  return r;
}
function rowTexts(tr) {
  const texts = {};
  for (const t of tr.querySelectorAll("textarea")) texts[t.dataset.campo] = t.value;
  return texts;
}
function cell(field, value, label, onInput) {
  return el("td", {}, el("textarea", {rows: 3, value: value || "", "data-campo": field, "aria-label": label, oninput: onInput}));
}
function deleteButton(tr, isDeleted, toggle) {
  const button = el("button", {type: "button", class: "borrar-fila"}, isDeleted ? "Recuperar" : "Borrar");
  button.addEventListener("click", () => {
    const now = toggle();
    tr.classList.toggle("borrada", now);
    for (const t of tr.querySelectorAll("textarea")) t.disabled = now;
    button.textContent = now ? "Recuperar" : "Borrar";
    showPending();
  });
  return el("td", {}, button);
}
function editorRow(row) {
  const tr = el("tr", {"data-linea": row.linea, "data-tipo": row.tipo});
  tr.append(el("th", {scope: "row"}, String(row.linea)));
  if (row.tipo === "ejemplo") {
    const edited = ED.edits.get(row.linea);
    const changed = () => { ED.edits.set(row.linea, {linea: row.linea, ...rowTexts(tr)}); tr.classList.add("cambiada"); showPending(); };
    for (const f of EDITABLE) tr.append(cell(f, edited ? edited[f] : row[f], `${FIELD_LABELS[f]}, línea ${row.linea}`, changed));
    if (edited) tr.classList.add("cambiada");
  } else {
    const what = row.tipo === "conversacion" ? `Conversación de ${row.turnos} turnos (no se cambia aquí): «${short(row.pregunta, 200)}»`
      : row.tipo === "estructurado" ? `Ejemplo con datos estructurados (no se cambia aquí): «${short(row.pregunta, 200)}»`
      : `Línea con errores (no se cambia aquí; bórrala o corrígela en tu archivo): ${short(row.texto, 200)}`;
    tr.append(el("td", {colSpan: 4, class: "solo-lectura"}, what));
  }
  const isDeleted = ED.deleted.has(row.linea);
  tr.append(deleteButton(tr, isDeleted, () => {
    if (ED.deleted.has(row.linea)) { ED.deleted.delete(row.linea); return false; }
    ED.deleted.add(row.linea); return true;
  }));
  if (isDeleted) { tr.classList.add("borrada"); for (const t of tr.querySelectorAll("textarea")) t.disabled = true; }
  return tr;
}
function newRow(item) {
  const tr = el("tr", {class: "nueva", "data-nueva": item.key});
  const index = ED.added.indexOf(item) + 1;
  tr.append(el("th", {scope: "row"}, `Nueva ${index}`));
  const changed = () => { Object.assign(item, rowTexts(tr)); showPending(); };
  for (const f of EDITABLE) tr.append(cell(f, item[f], `${FIELD_LABELS[f]}, fila nueva ${index}`, changed));
  tr.append(deleteButton(tr, false, () => { ED.added.splice(ED.added.indexOf(item), 1); tr.remove(); return true; }));
  return tr;
}
function addRow() {
  const item = {key: ED.nextKey++, pregunta: "", respuesta: "", contexto: "", sistema: ""};
  ED.added.push(item);
  const tr = newRow(item);
  $("#editor-tabla tbody").append(tr);
  tr.querySelector("textarea").focus();
  showPending();
  say("Fila nueva añadida al final de la tabla: escribe la pregunta y la respuesta.");
}
async function saveRows() {
  if (!pending()) { say("No hay cambios que guardar."); return; }
  const filas = [...ED.edits.values(), ...ED.added.map(({key, ...texts}) => ({linea: null, ...texts}))];
  say("Guardando y comprobando los ejemplos…");
  const r = await api("POST", `/api/datos/${encodeURIComponent(ED.id)}/filas`, {version: ED.version, filas, borradas: [...ED.deleted]});
  const added = ED.added.length;
  Object.assign(ED, {edits: new Map(), deleted: new Set(), added: [], version: r.version});
  showValidation(r, ED.nombre);
  await openEditor(added ? Number.MAX_SAFE_INTEGER : ED.page);
  say(`Guardado: ${plural(r.ejemplos, "ejemplo que se puede usar", "ejemplos que se pueden usar")}, ${plural(r.total_errores, "línea con errores", "líneas con errores")}.`);
}

// --- drafts from documents: upload, «Escribir borradores» (a job), the review queue ------------------------------
const DR = {id: null, items: [], current: null, undo: [], correcting: false};
async function initDatos() {
  await Promise.all([loadDocuments(), loadDraftFiles()]);
}
async function uploadDocuments() {
  const files = [...$("#documentos").files];
  if (!files.length) throw new ApiError({mensaje: "elige primero uno o más documentos (PDF, Word, .txt o .md)"});
  const ids = [];
  for (const file of files) {
    checkSize(file);
    say(`Subiendo ${file.name}…`);
    const r = await api("POST", "/api/documentos", file, fileHeaders(file));
    ids.push(r.id);
    say(`${file.name}: ${plural(r.pasajes, "trozo de texto", "trozos de texto")} para el profesor.`);
  }
  await loadDocuments(ids);
}
async function loadDocuments(checked = []) {
  const keep = new Set([...checked, ...$$("input[name=documento]:checked").map((c) => c.value)]);
  const r = await api("GET", "/api/documentos");
  fill($("#lista-documentos"), r.documentos.length ? r.documentos.map((d) => el("label", {class: "opcion"},
    el("input", {type: "checkbox", name: "documento", value: d.id, checked: keep.has(d.id)}), ` ${d.id} (${Math.ceil(d.bytes / 1024)} KB)`))
    : el("p", {class: "nota"}, "Ninguno todavía."));
}
async function writeDrafts() {
  const documentos = $$("input[name=documento]:checked").map((c) => c.value);
  if (!documentos.length) throw new ApiError({mensaje: "marca al menos un documento subido"});
  const job = await api("POST", "/api/borradores/trabajo", {documentos, profesor_url: $("#profesor-url").value.trim(),
    modelo: $("#profesor-modelo").value.trim(), permitir_remoto: $("#profesor-remoto").checked,
    por_pasaje: parseInt($("#por-pasaje").value, 10) || 3});
  watch(job);
  say(`Escribiendo borradores en «${job.ejecucion}»: puedes seguir aquí; al terminar, revísalos abajo.`);
}
function draftsFinished(job) {
  loadDraftFiles().then(() => { if ([...$("#lista-borradores").options].some((o) => o.value === job.ejecucion)) $("#lista-borradores").value = job.ejecucion; }).catch(showError);
}
const draftsLabel = (b) => b.recuento ? `${b.id} — ${b.recuento["sin revisar"]} sin revisar de ${b.recuento.total}` : `${b.id} — no se puede leer`;
async function loadDraftFiles() {
  const r = await api("GET", "/api/borradores");
  const label = draftsLabel;
  fill($("#lista-borradores"), r.borradores.length ? r.borradores.map((b) => el("option", {value: b.id}, label(b)))
    : el("option", {value: ""}, "(ninguno todavía)"));
}
async function openDrafts() {
  const id = $("#lista-borradores").value;
  if (!id) throw new ApiError({mensaje: "todavía no hay borradores: escríbelos primero desde tus documentos"});
  const r = await api("GET", `/api/borradores/${encodeURIComponent(id)}`);
  Object.assign(DR, {id, items: r.borradores, current: null, undo: [], correcting: false});
  $("#revision").hidden = false;
  $("#deshacer-borrador").disabled = true;
  showCounts(r.recuento);
  nextDraft();
  focusDraft();
}
function showCounts(c) {
  DR.counts = c;
  $("#recuento").textContent = `Sin revisar: ${c["sin revisar"]} · Aceptados: ${c.aceptado} · Corregidos: ${c.corregido} · Descartados: ${c.descartado} (de ${c.total})`;
  $("#usar-revisados").disabled = !(c.aceptado + c.corregido);
  const option = [...$("#lista-borradores").options].find((o) => o.value === DR.id);
  if (option) option.textContent = draftsLabel({id: DR.id, recuento: c});  // the list says what is left, too
}
function nextDraft(id) {
  DR.current = (id ? DR.items.find((d) => d.id === id) : DR.items.find((d) => d.estado === "sin revisar")) || null;
  DR.correcting = false;
  renderDraft();
}
function focusDraft() {
  const title = $("#borrador-titulo");
  if (title) title.focus(); else $("#usar-revisados").focus();
}
function draftText(id, label, text, editing) {
  return editing ? [el("label", {htmlFor: id}, label), el("textarea", {id, rows: 4, value: text})]
    : [el("h6", {}, label), el("p", {class: "respuesta", id}, text)];
}
function renderDraft() {
  const box = $("#borrador-actual"), d = DR.current;
  if (!d) {
    fill(box, el("p", {class: "bueno", id: "fin-revision"}, "No quedan borradores sin revisar. Pulsa «Usar los revisados para entrenar»: solo entran los aceptados y los corregidos."));
    return;
  }
  const src = d.fuente || {};
  const where = [src.archivo, src.pagina ? `página ${src.pagina}` : null, src.seccion ? `sección «${src.seccion}»` : null].filter(Boolean).join(", ");
  const personal = d.datos_personales && d.datos_personales.length;
  const buttons = DR.correcting
    ? [el("button", {type: "button", id: "guardar-correccion", onclick: () => guarded(saveCorrection)}, "Guardar la corrección"),
       el("button", {type: "button", id: "cancelar-correccion", onclick: () => { DR.correcting = false; renderDraft(); focusDraft(); }}, "Cancelar la corrección")]
    : [el("button", {type: "button", id: "aceptar-borrador", onclick: () => guarded(() => decide("aceptar"))}, "Aceptar"),
       el("button", {type: "button", id: "corregir-borrador", onclick: startCorrection}, "Corregir"),
       el("button", {type: "button", id: "descartar-borrador", onclick: () => guarded(() => decide("descartar"))}, "Descartar")];
  fill(box, el("article", {class: "tarjeta borrador", "data-id": d.id, "data-estado": d.estado},
    el("h4", {id: "borrador-titulo", tabIndex: -1}, `Borrador ${DR.items.indexOf(d) + 1} de ${DR.items.length}`,
      d.estado !== "sin revisar" ? ` (${d.estado})` : ""),
    personal ? el("p", {class: "marca-personal", id: "marca-personal"}, `Posibles datos personales (${d.datos_personales.join(", ")}): si identifica a alguien, descártalo o corrígelo.`) : null,
    el("div", {class: "revision"},
      el("section", {class: "fuente", "aria-label": "De dónde sale"}, el("h5", {}, "De dónde sale"),
        el("p", {class: "nota", id: "borrador-fuente"}, where || "(sin fuente)"),
        el("blockquote", {class: "pasaje", id: "borrador-pasaje"}, src.texto || "(el trozo del documento no está guardado)")),
      el("section", {"aria-label": "Borrador"}, el("h5", {}, "Borrador del profesor"),
        draftText("borrador-pregunta", "Pregunta", d.pregunta, DR.correcting),
        draftText("borrador-respuesta", "Respuesta", d.respuesta, DR.correcting))),
    el("p", {class: "acciones"}, buttons)));
}
function startCorrection() {
  if (!DR.current) return;
  DR.correcting = true;
  renderDraft();
  $("#borrador-pregunta").focus();
  say("Corrige la pregunta o la respuesta y pulsa «Guardar la corrección».");
}
async function saveCorrection() {
  await decide("corregir", {pregunta: $("#borrador-pregunta").value, respuesta: $("#borrador-respuesta").value});
}
const DONE = {aceptar: "aceptado", corregir: "corregido", descartar: "descartado"};
async function decide(decision, texts = {}) {
  const d = DR.current;
  if (!d) return;
  const r = await api("POST", `/api/borradores/${encodeURIComponent(DR.id)}/revisar`, {borrador: d.id, decision, ...texts});
  DR.items[DR.items.indexOf(d)] = r.borrador;
  DR.undo.push(d.id);
  $("#deshacer-borrador").disabled = false;
  showCounts(r.recuento);
  say(`Borrador ${DR.items.indexOf(r.borrador) + 1} ${DONE[decision]}.`);
  nextDraft();
  focusDraft();
}
async function undoDecision() {
  const id = DR.undo.pop();
  if (!id) return;
  const r = await api("POST", `/api/borradores/${encodeURIComponent(DR.id)}/revisar`, {borrador: id, decision: "deshacer"});
  const index = DR.items.findIndex((d) => d.id === id);
  DR.items[index] = r.borrador;
  $("#deshacer-borrador").disabled = !DR.undo.length;
  showCounts(r.recuento);
  nextDraft(id);
  focusDraft();
  say(`Deshecho: el borrador ${index + 1} vuelve a estar sin revisar.`);
}
async function useReviewed() {
  say("Guardando los borradores revisados como ejemplos y comprobándolos…");
  const r = await api("POST", `/api/borradores/${encodeURIComponent(DR.id)}/usar`);
  const name = `${DR.id} (revisados)`;
  S.datos = {id: r.id, nombre: name}; save();
  showValidation(r.validacion, name);
  await loadDatasets();
  $("#subidos").value = r.id;
  say(`${plural(r.ejemplos, "borrador revisado guardado", "borradores revisados guardados")} como ejemplos: «${r.id}». Los no revisados y los descartados no entran.`);
}
// a / c / d / z while reviewing, never while typing (a textarea, a field, a list).
function reviewKeys(e) {
  if ($("#revision").hidden || $("#paso-datos").hidden || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  // Only while reviewing (the focus in the review, or nowhere), and never while typing.
  if (e.target !== document.body && !(e.target.closest && e.target.closest("#revision"))) return;
  if (e.target.closest && e.target.closest("textarea, input, select, [contenteditable]")) return;
  const key = e.key.toLowerCase();
  const action = key === "z" ? undoDecision
    : DR.current && !DR.correcting ? {a: () => decide("aceptar"), d: () => decide("descartar"), c: async () => startCorrection()}[key] : null;
  if (!action) return;
  e.preventDefault();
  guarded(action);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#tabla-hoja").addEventListener("change", () => guarded(changeSheet));
  $("#usar-columnas").addEventListener("click", () => guarded(useColumns));
  $("#abrir-editor").addEventListener("click", () => guarded(() => openEditor(1)));
  $("#editor-anterior").addEventListener("click", () => guarded(() => openEditor(ED.page - 1)));
  $("#editor-siguiente").addEventListener("click", () => guarded(() => openEditor(ED.page + 1)));
  $("#editor-nueva").addEventListener("click", addRow);
  $("#editor-guardar").addEventListener("click", () => guarded(saveRows));
  $("#subir-documentos").addEventListener("click", () => guarded(uploadDocuments));
  $("#escribir-borradores").addEventListener("click", () => guarded(writeDrafts));
  $("#abrir-borradores").addEventListener("click", () => guarded(openDrafts));
  $("#deshacer-borrador").addEventListener("click", () => guarded(undoDecision));
  $("#usar-revisados").addEventListener("click", () => guarded(useReviewed));
  document.addEventListener("keydown", reviewKeys);
});
