"""GGUF for llama.cpp and Ollama, made with llama.cpp's own tools and checked in llama.cpp.

- Converter: `convert_hf_to_gguf.py` with its `conversion/` and `gguf-py/`, taken from the llama-cpp-python sdist of
  the *installed* version (so converter, quantiser and loader are the same llama.cpp commit) and cached under
  `~/.cache/afinar/llama.cpp/`. `AFINAR_LLAMA_CPP_SDIST=/ruta/llama_cpp_python-X.tar.gz` works offline.
- Quantiser: `llama_cpp.llama_model_quantize` (llama.cpp's `llama-quantize`).
- Check: load in llama-cpp-python; chat template and eos in the metadata are the tuned model's, the prompt tokenises
  the same, greedy generation stops, and f16's first tokens equal transformers'.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from afinar import extras
from afinar.atomic import atomic_dir, require_free_space
from afinar.errors import AfinarError
from afinar.export.reference import Reference, compare_choices, same_prefix
from afinar.export.weights import parameter_count, tensor_shapes
from afinar.inference.sampling import greedy_decode
from afinar.models import afinar_home

QUANTS = ("f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
           "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
# Bytes per weight, for the free-space check before starting (Q5_K: 5.5 bits, Q6_K: 6.56 bits, plus the tensors kept wider).
BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 1.07, "q4_k_m": 0.6, "q5_k_m": 0.72, "q6_k": 0.83}
_VENDOR = "vendor/llama.cpp/"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def check_quants(quants: list[str]) -> list[str]:
    """The requested quantisations, without repeats, or X001 naming the unknown ones."""
    if bad := [q for q in quants if q not in QUANTS]:
        raise AfinarError("X001", f"cuantización GGUF no disponible: {', '.join(bad)}", hint=f"opciones: {', '.join(QUANTS)}")
    return list(dict.fromkeys(quants))


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (X020 without it)."""
    from importlib.metadata import version

    extras.require("llamacpp")
    return version("llama-cpp-python")


def converter_dir() -> Path:
    """The cached converter of the installed llama-cpp-python version, fetched from its sdist the first time."""
    version = llama_cpp_version()
    cache = afinar_home() / "llama.cpp" / f"llama-cpp-python-{version}"
    if (cache / "convert_hf_to_gguf.py").is_file():
        return cache
    local = os.environ.get("AFINAR_LLAMA_CPP_SDIST")
    with tempfile.TemporaryDirectory(prefix="afinar-sdist-") as tmp:
        sdist = Path(local) if local else _download_sdist(version, Path(tmp))
        if not sdist.is_file():
            raise AfinarError("X021", "no existe el sdist de llama-cpp-python indicado.", where=str(sdist))
        print(f"Extrayendo el conversor de llama.cpp de {sdist.name} (una vez; queda en {cache})")
        with atomic_dir(cache, overwrite=True) as out:
            _extract_converter(sdist, out)
    return cache


def _download_sdist(version: str, into: Path) -> Path:
    # pip, not a hand-made HTTP client: it honours the user's index, proxy and certificates, and caches.
    print(f"Descargando el código de llama-cpp-python {version} (trae el conversor oficial de llama.cpp)…")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(into),
           f"llama-cpp-python=={version}"]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr or "").strip().splitlines()[-1:] or ["sin detalle"]
        raise AfinarError("X021", f"no se pudo descargar el conversor de llama.cpp ({last[0][:200]}).",
                          hint="sin internet: descarga llama_cpp_python-" + version + ".tar.gz de PyPI y pasa su ruta en "
                               "AFINAR_LLAMA_CPP_SDIST")
    return found[0]


def _extract_converter(sdist: Path, out: Path) -> None:
    """Copy only the converter's files, as regular files under `out` (no links, no paths that climb out)."""
    wrote = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/", 1)
            rel = parts[1] if len(parts) == 2 else ""
            if not rel.startswith(_VENDOR) or not member.isfile():
                continue
            rel = rel[len(_VENDOR):]
            if not rel.startswith(_KEEP) or ".." in Path(rel).parts or Path(rel).is_absolute():
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                dst.write(src.read())
            wrote += 1
    if not (out / "convert_hf_to_gguf.py").is_file() or not (out / "gguf-py").is_dir():
        raise AfinarError("X021", "el sdist no trae convert_hf_to_gguf.py con gguf-py/.", where=str(sdist))
    if wrote < 3:
        raise AfinarError("X021", "el sdist no trae el conversor completo.", where=str(sdist))


def gguf_model_name(model_dir: Path, name: str) -> str:
    """`general.name` of the GGUF: the export's name. llama.cpp keys one tokenizer rule on it: Phi-3's special tokens
    swallow the whitespace after them (as in its tokenizer.json) only when the name contains "phi3" or "phi-3"
    (llama-vocab.cpp); without it llama.cpp tokenizes `<|user|>\n…` unlike transformers."""
    model_type = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("model_type")
    lowered = name.lower()
    return f"{name}-phi3" if model_type == "phi3" and "phi3" not in lowered and "phi-3" not in lowered else name


def convert(model_dir: Path, out_file: Path, outtype: str = "f16", progress: bool = True,
            model_name: str | None = None) -> Path:
    """HF folder → GGUF with llama.cpp's converter; a readable AfinarError when the converter refuses."""
    from tqdm import tqdm

    script = converter_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(out_file), "--outtype", outtype]
    if model_name:
        cmd += ["--model-name", model_name]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the converter's own gguf-py
    n = len(tensor_shapes(model_dir))
    log: list[str] = []
    bar = tqdm(total=n + 100, desc=f"GGUF {outtype}", unit="paso", disable=not progress, leave=False)
    written = 0
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as proc:
        # The converter logs one line per tensor, then tqdm "Writing: NN%" updates separated by \r.
        for line in _lines(proc.stderr):
            log.append(line)
            if re.match(r"INFO:hf-to-gguf:\S+,\s+torch\.", line):
                bar.update(1) if bar.n < n else None
            elif m := re.search(r"Writing:\s+(\d+)%", line):
                pct = int(m.group(1))
                bar.update(max(0, pct - written))
                written = max(written, pct)
        proc.wait()
    bar.close()
    if proc.returncode != 0 or not out_file.is_file():
        with contextlib.suppress(FileNotFoundError):
            out_file.unlink()
        raise _converter_error(log, model_dir)
    return out_file


def _lines(stream):
    buf = b""
    while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096):
        buf += chunk
        *done, buf = re.split(rb"[\r\n]", buf)
        for raw in done:
            if raw.strip():
                yield raw.decode("utf-8", "replace")
    if buf.strip():
        yield buf.decode("utf-8", "replace")


def _converter_error(log: list[str], model_dir: Path) -> AfinarError:
    text = "\n".join(log)
    if m := re.search(r"Model (\S+) is not supported", text):
        return AfinarError("X022", f"llama.cpp no sabe convertir la arquitectura {m.group(1)} a GGUF.", where=str(model_dir),
                           hint="usa --formato safetensors u onnx, o un modelo base que llama.cpp admita "
                                "(Llama, Qwen2, Phi, Gemma…)")
    if "pre-tokenizer was not recognized" in text:
        return AfinarError("X023", "llama.cpp no reconoce el pre-tokenizador de este tokenizador (no sabría partir "
                                   "el texto igual que en el entrenamiento).", where=str(model_dir),
                           hint="usa un modelo base publicado que llama.cpp ya conozca, o --formato safetensors/onnx")
    last = [line for line in log if "ERROR" in line or "Error" in line][-1:] or log[-1:] or ["sin detalle"]
    return AfinarError("X024", f"el conversor de llama.cpp falló: {last[0][:300]}", where=str(model_dir))


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send C-level stderr (llama.cpp's per-tensor log) to a file; Python's own progress bar keeps the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield os.fdopen(os.dup(saved), "w")
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quantize(src: Path, dst: Path, kind: str, progress: bool = True) -> Path:
    import ctypes

    import llama_cpp
    from tqdm import tqdm

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[kind])
    params.nthread = os.cpu_count() or 1
    result: dict = {}

    def work():
        result["rc"] = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))

    with tempfile.TemporaryDirectory(prefix="afinar-quant-") as tmp:
        log = Path(tmp) / "quantize.log"
        with _stderr_to(log) as terminal:
            bar = tqdm(desc=f"GGUF {kind}", unit="tensor", file=terminal, disable=not progress, leave=False)
            thread = threading.Thread(target=work)
            thread.start()
            while True:
                thread.join(0.2)
                done = re.findall(rb"\[\s*(\d+)/\s*(\d+)\]", log.read_bytes())
                if done:
                    i, total = map(int, done[-1])
                    bar.total = total
                    bar.update(i - bar.n)
                if not thread.is_alive():
                    break
            bar.close()
            terminal.close()
        text = log.read_text("utf-8", "replace")
    if result.get("rc") != 0 or not dst.is_file():
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        why = [line for line in text.splitlines() if "failed" in line or "error" in line.lower()][-1:] or ["sin detalle"]
        raise AfinarError("X025", f"llama.cpp no pudo cuantizar a {kind}: {why[0][:300]}", where=str(src))
    return dst


def verify(path: Path, ref: Reference, kind: str) -> dict:
    """Load the file in llama-cpp-python and check what users would notice first: template, stop, first tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ref.prompt_ids) + 2 * ref.max_new_tokens + 8,
                          n_threads=os.cpu_count() or 1, n_batch=512, seed=0, logits_all=True, verbose=False)
    try:
        meta = llm.metadata
        template = meta.get("tokenizer.chat_template")
        eos = int(meta.get("tokenizer.ggml.eos_token_id", -1))
        problems = []
        if ref.chat_template and template != ref.chat_template:
            problems.append("la plantilla de chat del GGUF no es la del modelo afinado")
        if eos not in ref.eos_ids:
            problems.append(f"el eos del GGUF es {eos}, el del modelo afinado {sorted(ref.eos_ids)}")
        if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, ref.end_of_turn):
            problems.append(f"llama.cpp no trata el fin de turno del modelo (id {ref.end_of_turn}) como fin de generación")
        llama_ids = llm.tokenize(ref.prompt_text.encode("utf-8"), add_bos=False, special=True)
        if llama_ids != ref.prompt_ids:
            problems.append("llama.cpp tokeniza el prompt distinto que transformers")
        if problems:
            raise AfinarError("X026", "GGUF incorrecto: " + "; ".join(problems) + ". No se guarda.", where=str(path))

        import numpy as np

        def step(ids: list[int]):
            llm.eval(ids)
            last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            return np.ctypeslib.as_array(last, shape=(llm.n_vocab(),)).copy()  # (V,) logits of the last position

        def greedy(penalty: float, limit: int) -> tuple[list[int], bool]:
            llm.reset()
            return greedy_decode(step, ref.prompt_ids, ref.eos_ids, limit, penalty)

        llm.reset()
        llm.eval(ref.prompt_ids + ref.tokens)
        start = len(ref.prompt_ids) - 1
        choices = compare_choices(ref, llm.scores[start:start + len(ref.tokens)])
        started = time.perf_counter()
        # Quantised models may take a few more words to finish; twice the budget is still "stops on its own".
        answer, stopped = greedy(ref.repetition_penalty, ref.max_new_tokens * (1 if kind == "f16" else 2))
        seconds = time.perf_counter() - started
    finally:
        llm.close()

    agree = choices["iguales"] + choices["casi_empates"]
    if kind == "f16" and agree < choices["comparados"]:
        raise AfinarError("X027", f"el GGUF f16 no elige los tokens de transformers: {agree} de {choices['comparados']} "
                                  f"(máx |Δlogits| {choices['max_abs_logits']:.2f}). No se guarda.", where=str(path))
    if ref.stopped and not stopped:
        raise AfinarError("X027", f"el GGUF {kind} no termina su respuesta ({len(answer)} tokens sin fin de turno) y el "
                                  "modelo en transformers sí. No se guarda.", where=str(path),
                          hint="prueba q8_0 si falla q4_k_m" if kind == "q4_k_m" else None)
    return {"plantilla": True, "eos": eos, "fin_de_turno": ref.end_of_turn, "prompt_tokens_iguales": True,
            "se_detiene": stopped,
            "tokens_generados": len(answer), "primeros_tokens_iguales": agree, "casi_empates": choices["casi_empates"],
            "comparados": choices["comparados"], "max_abs_logits": round(choices["max_abs_logits"], 4),
            "respuesta_igual_hasta": same_prefix(answer, ref.answer),
            "tokens_por_s": round(len(answer) / seconds, 1) if seconds > 0 else None}


def export_gguf(model_dir: Path, folder: Path, name: str, quants: list[str], ref: Reference,
                progress: bool = True) -> tuple[dict[str, dict], dict[str, AfinarError]]:
    """Write `folder/name-<quant>.gguf` for f16 and each requested quant; each file appears only once verified.

    Returns (checked results by kind, failures by kind). f16 failing raises: every quantisation starts from it; a
    quantisation failing is recorded and the others go on."""
    quants = ["f16", *[q for q in check_quants(quants) if q != "f16"]]
    folder.mkdir(parents=True, exist_ok=True)
    params = parameter_count(model_dir)
    require_free_space(folder, int(params * sum(BYTES_PER_WEIGHT[q] for q in quants)), "X012")
    results: dict[str, dict] = {}
    failed: dict[str, AfinarError] = {}
    f16_tmp = folder / f".{name}-f16.gguf.tmp"
    try:
        convert(model_dir, f16_tmp, "f16", progress=progress, model_name=gguf_model_name(model_dir, name))
        results["f16"] = {"path": folder / f"{name}-f16.gguf", **verify(f16_tmp, ref, "f16")}
        os.replace(f16_tmp, results["f16"]["path"])
        for kind in quants[1:]:
            tmp = folder / f".{name}-{kind}.gguf.tmp"
            try:
                quantize(results["f16"]["path"], tmp, kind, progress=progress)
                results[kind] = {"path": folder / f"{name}-{kind}.gguf", **verify(tmp, ref, kind)}
                os.replace(tmp, results[kind]["path"])
            except AfinarError as exc:
                failed[kind] = exc
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            f16_tmp.unlink()
    return results, failed
