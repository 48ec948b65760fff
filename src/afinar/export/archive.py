"""Zip export done right: sizes scanned first, one progress bar in bytes, Zip64, 1 MB chunks (flat memory for
multi-GB weights), a SHA-256 manifest inside, temp name + rename. Verification re-hashes every member, and
extraction refuses absolute paths, `..` and links (zip-slip).
"""
from __future__ import annotations

import hashlib
import json
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from afinar.atomic import atomic_open, require_free_space
from afinar.errors import AfinarError

MANIFEST = "afinar_manifest.json"
CHUNK = 1 << 20


def _files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise AfinarError("X010", "la carpeta contiene un enlace simbólico; no se empaqueta.", where=str(path))
        if path.is_file():
            files.append(path)
    return files


def create_zip(folder: str | Path, output: str | Path, progress: bool = True) -> dict:
    """Zip `folder` into `output` with a manifest; returns the manifest. Nothing is left behind on failure."""
    from tqdm.auto import tqdm

    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise AfinarError("X011", "no existe la carpeta que se quiere empaquetar.", where=str(folder))
    files = [p for p in _files(folder) if p.resolve() != output.resolve()]
    total = sum(p.stat().st_size for p in files)
    output.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(output.parent, total, "X012", margin=1.05)
    manifest = {"format": "afinar.zip/1", "files": {}}
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"Empaquetando {output.name}",
               disable=not progress, dynamic_ncols=True)
    with atomic_open(output, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED,
                                                               allowZip64=True) as archive:
        for path in files:
            name = path.relative_to(folder).as_posix()
            digest = hashlib.sha256()
            # force_zip64: a member can pass 4 GB (model weights) and the size is only known at the end.
            with open(path, "rb") as source, archive.open(name, "w", force_zip64=True) as target:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
                    bar.update(len(chunk))
            manifest["files"][name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    bar.close()
    return manifest


def _safe_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    path = PurePosixPath(name)
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if is_link or path.is_absolute() or ".." in path.parts or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise AfinarError("X013", "el zip contiene una ruta peligrosa (absoluta, con '..' o un enlace); no se extrae.",
                          where=name)
    return name


def verify_zip(path: str | Path, progress: bool = True) -> dict:
    """Re-hash every member against the manifest; raises X014 on any mismatch, missing or extra file."""
    from tqdm.auto import tqdm

    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AfinarError("X014", f"no es un zip válido o está truncado ({type(exc).__name__}).", where=str(path)) from exc
    with archive:
        try:
            manifest = json.loads(archive.read(MANIFEST))
        except KeyError as exc:
            raise AfinarError("X014", f"el zip no tiene {MANIFEST}: no lo creó afinar.", where=str(path)) from exc
        members = {i.filename: i for i in archive.infolist() if i.filename != MANIFEST and not i.is_dir()}
        for info in members.values():
            _safe_name(info)
        missing = sorted(set(manifest["files"]) - set(members))
        extra = sorted(set(members) - set(manifest["files"]))
        if missing or extra:
            raise AfinarError("X014", f"el contenido no coincide con el manifiesto (faltan {missing}, sobran {extra}).",
                              where=str(path))
        total = sum(f["bytes"] for f in manifest["files"].values())
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="Verificando", disable=not progress)
        for name, expected in manifest["files"].items():
            digest = hashlib.sha256()
            try:
                with archive.open(name) as member:
                    while chunk := member.read(CHUNK):
                        digest.update(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
                raise AfinarError("X014", f"'{name}' está dañado o truncado ({type(exc).__name__}).", where=str(path)) from exc
            if digest.hexdigest() != expected["sha256"]:
                raise AfinarError("X014", f"'{name}' no coincide con su SHA-256 del manifiesto.", where=str(path))
        bar.close()
    return manifest


def extract_zip(path: str | Path, destination: str | Path) -> Path:
    """Verify, then extract into a temporary sibling renamed to `destination` (refuses unsafe member names)."""
    from afinar.atomic import atomic_dir

    verify_zip(path, progress=False)
    destination = Path(destination)
    with zipfile.ZipFile(path) as archive, atomic_dir(destination) as tmp:
        for info in archive.infolist():
            name = _safe_name(info)
            if info.is_dir():
                continue
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
    return destination
