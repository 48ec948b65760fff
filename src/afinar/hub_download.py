"""Download a base from the Hugging Face Hub with a progress bar and ETA, resume after a cut, and verify every file.

- Progress: huggingface_hub's own byte bars (tqdm: size, rate and the time left) for each file, after one Spanish
  line with the whole download's size.
- Resume: huggingface_hub writes each file to `<blob>.incomplete` and, called again, asks the server for the rest
  (an HTTP Range request); the files already complete are not fetched again.
- Verification: the Hub lists every file's hash (`HfApi.model_info(files_metadata=True)`): the SHA-256 of a large
  (Git LFS) file, the Git blob SHA-1 of a small one. Each downloaded file is hashed and compared; a mismatch deletes
  the file (its cached blob) and raises M030, so that trying again fetches it anew. A verified snapshot is recorded
  under afinar's home and not hashed again.

Only what training needs is fetched: the top-level config, tokenizer, template and safetensors files (no .bin,
.pt, ONNX, GGUF or other formats' copies of the weights).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from afinar.atomic import file_sha256
from afinar.errors import AfinarError
from afinar.home import afinar_home

_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data", ".gguf", ".tflite",
                  ".mlmodel", ".ckpt", ".npz")
_WANTED = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken")


def wanted_files(names: list[str]) -> list[str]:
    """The repository's files training reads: top level, no weights in other formats, no remote code."""
    keep = []
    for name in names:
        if "/" in name and not name.startswith("additional_chat_templates/"):
            continue
        lower = name.lower()
        if lower.endswith(_OTHER_WEIGHTS) or not lower.endswith(_WANTED):
            continue
        keep.append(name)
    return keep


def _git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: sha1(b"blob <size>\\0" + content) (what the Hub lists for non-LFS files)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - Git's id, not a security use
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    """A snapshot file and the cached blob it links to."""
    try:
        real = Path(os.path.realpath(path))
        if real != path and real.exists():
            real.unlink()
    finally:
        path.unlink(missing_ok=True)


def _record_path(repo_id: str, commit: str) -> Path:
    return afinar_home() / "hub_verificado" / f"{repo_id.replace('/', '--')}--{commit}.json"


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB".replace(".", ",") if n >= 1e8 else f"{n / 1e6:.1f} MB".replace(".", ",")


def download_base(repo_id: str, revision: str | None = None, say=print) -> Path:
    """The folder of `repo_id` at `revision` (default: main) in the Hugging Face cache, downloaded (or completed)
    and verified. Errors: M003 (no connection, unknown id, gated without access), M030 (a file's hash does not
    match the Hub's: it is deleted; run again)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it once, when imported
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError as exc:
        raise AfinarError("M003", f"{repo_id} es un modelo con acceso restringido en el Hub.", where=repo_id,
                          hint="acepta su licencia en huggingface.co y define HF_TOKEN (o `hf auth login`)") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise AfinarError("M003", f"no existe en el Hub: {repo_id}" + (f" (revisión {revision})" if revision else ""),
                          where=repo_id) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise AfinarError("M003", f"no se pudo consultar el Hub para {repo_id}: {str(exc).splitlines()[0][:200]}",
                          where=repo_id, hint="comprueba la conexión; sin ella usa el modelo incluido (smollm2-135m), "
                                              "una carpeta local o un archivo .gguf") from exc
    commit = info.sha
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    names = wanted_files(sorted(siblings))
    if not any(n.endswith(".safetensors") for n in names):
        raise AfinarError("M003", f"{repo_id} no publica pesos en safetensors (afinar no carga .bin ni código remoto).",
                          where=repo_id)
    record = _record_path(repo_id, commit)
    total = sum((siblings[n].size or 0) for n in names)
    say(f"Descargando {repo_id} (revisión {commit[:8]}): {len(names)} archivos, {_human(total)}. Si se corta, vuelve a "
        "ejecutar la misma orden: continúa donde quedó.")
    folder = None
    for index, name in enumerate(names, 1):
        try:
            path = Path(hf_hub_download(repo_id, name, revision=commit, endpoint=endpoint))
        except (HfHubHTTPError, OSError) as exc:
            raise AfinarError("M003", f"la descarga de {name} ({index}/{len(names)}) se interrumpió: "
                                      f"{str(exc).splitlines()[0][:200]}", where=repo_id,
                              hint="vuelve a ejecutar la orden: lo ya descargado se conserva y se continúa") from exc
        if "/" not in name:
            folder = path.parent
    if record.is_file():
        return folder
    say(f"Verificando {len(names)} archivos contra los hashes publicados en el Hub…")
    for name in names:
        sibling = siblings[name]
        path = folder / name
        lfs = getattr(sibling, "lfs", None)
        if lfs is not None:
            expected, got, kind = _lfs_sha256(lfs), file_sha256(path), "SHA-256"
        elif getattr(sibling, "blob_id", None):
            expected, got, kind = sibling.blob_id, _git_blob_sha1(path), "SHA-1 de Git"
        else:
            continue
        if expected and got != expected:
            _remove(path)
            raise AfinarError(
                "M030", f"{name} de {repo_id} no coincide con el {kind} publicado en el Hub (esperado {expected[:12]}…, "
                f"descargado {got[:12]}…); se ha borrado.", where=repo_id,
                hint="vuelve a intentarlo: se descargará de nuevo solo ese archivo")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"repo": repo_id, "commit": commit, "files": names}), encoding="utf-8")
    say(f"✓ {repo_id}: {len(names)} archivos verificados en {folder}")
    return folder


def _lfs_sha256(lfs) -> str | None:
    if isinstance(lfs, dict):
        return lfs.get("sha256") or lfs.get("oid")
    return getattr(lfs, "sha256", None)
