"""Zip export: manifest, verification, truncation and zip-slip."""
import json
import os
import stat
import zipfile

import pytest

from afinar.errors import AfinarError
from afinar.export.archive import MANIFEST, create_zip, extract_zip, verify_zip


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "modelo"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}', encoding="utf-8")
    (root / "sub" / "pesos.bin").write_bytes(os.urandom(3 * (1 << 20) + 123))  # spans several 1 MB chunks
    return root


def test_zip_has_a_manifest_and_verifies(folder, tmp_path):
    out = tmp_path / "export.zip"
    manifest = create_zip(folder, out, progress=False)
    assert set(manifest["files"]) == {"config.json", "sub/pesos.bin"}
    assert manifest["files"]["sub/pesos.bin"]["bytes"] == 3 * (1 << 20) + 123
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read(MANIFEST)) == manifest
    assert verify_zip(out, progress=False) == manifest
    extracted = extract_zip(out, tmp_path / "fuera")
    assert (extracted / "sub" / "pesos.bin").read_bytes() == (folder / "sub" / "pesos.bin").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_truncated_and_tampered_zips_are_refused(folder, tmp_path):
    out = tmp_path / "export.zip"
    create_zip(folder, out, progress=False)
    truncated = tmp_path / "truncado.zip"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(AfinarError) as info:
        verify_zip(truncated, progress=False)
    assert info.value.code == "X014"
    tampered = tmp_path / "cambiado.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"{}" if item.filename == "config.json" else data)
    with pytest.raises(AfinarError) as info:
        verify_zip(tampered, progress=False)
    assert info.value.code == "X014" and "config.json" in info.value.message


@pytest.mark.parametrize("name", ["../fuera.txt", "/etc/passwd_copia", "a/../../fuera.txt", "enlace"])
def test_zip_slip_is_refused_and_nothing_is_extracted(tmp_path, name):
    evil = tmp_path / "malo.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        info = zipfile.ZipInfo(name)
        if name == "enlace":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, b"x")
        archive.writestr(MANIFEST, json.dumps({"files": {name: {"sha256": "0", "bytes": 1}}}))
    with pytest.raises(AfinarError) as info:
        extract_zip(evil, tmp_path / "destino")
    assert info.value.code == "X013"
    assert not (tmp_path / "destino").exists() and not (tmp_path / "fuera.txt").exists()


def test_not_enough_space_is_said_before_writing(folder, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(AfinarError) as info:
        create_zip(folder, tmp_path / "x.zip", progress=False)
    assert info.value.code == "X012" and "MB" in info.value.message
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".x.zip*"))
