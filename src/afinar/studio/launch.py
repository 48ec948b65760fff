"""`afinar estudio`: prints the studio's address (with its token), opens the browser there and serves until Ctrl-C.
Jobs it started keep running after it ends (their own processes); a studio started again adopts them.

The way back in without a terminal (a nurse closes the browser, then opens the plain address):
- The token belongs to the studio's folder, not to one launch: it is kept in `<carpeta>/.token-estudio` (readable
  by this user only: whoever can read it can read the data beside it anyway) and reused by every launch on that
  folder, so the browser's cookie (HttpOnly, SameSite=Strict, 30 days, named after the port) keeps opening the
  studio after the browser or the studio is closed and opened again. `--token-nuevo` draws another one: every old
  cookie and link stops working.
- `afinar estudio` while that folder's studio already runs on the port does not fail: it opens the browser there.
- `afinar estudio --acceso-directo` writes a desktop launcher (Linux .desktop, Windows .cmd, macOS .command) that
  runs exactly that: one double click starts the studio or brings back the one that runs.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import urllib.request
import webbrowser
from pathlib import Path

from afinar.errors import AfinarError
from afinar.inference.server import LOOPBACK

DEFAULT_FOLDER = "afinar-estudio"
TOKEN_FILE = ".token-estudio"
COOKIE_DAYS = 30


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_port(host: str, port: int) -> None:
    if not port_free(host, port):
        raise AfinarError("E050", f"no se puede escuchar en {host}:{port}: el puerto está ocupado por otro programa "
                          "(no por el estudio de esta carpeta).",
                          hint=f"cierra el otro o usa otro puerto: afinar estudio --puerto {port + 1}")


def folder_token(root: Path, new: bool = False) -> str:
    """The folder's token: read from TOKEN_FILE, or drawn (secrets.token_urlsafe) and written there with mode 0600."""
    path = root / TOKEN_FILE
    if not new:
        try:
            token = path.read_text(encoding="ascii").strip()
            if len(token) >= 24:
                return token
        except (OSError, UnicodeDecodeError):
            pass
    token = secrets.token_urlsafe(24)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    os.replace(partial, path)
    return token


def running_studio(root: Path, token: str, port: int) -> bool:
    """Whether the studio of this folder answers on this port with this token (then a second launch just opens it)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/estado", headers={"X-Afinar-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            state = json.loads(answer.read().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return Path(state.get("carpeta", "")).resolve() == root.resolve()


def shortcut(folder: Path, port: int, home: Path | None = None, platform: str = sys.platform) -> Path:
    """A desktop launcher that runs `afinar estudio` on this folder and port with this Python (the same install)."""
    home = home or Path.home()
    desktop = home / ("Desktop" if (home / "Desktop").is_dir() or platform != "linux" else "Escritorio")
    if platform == "linux" and not desktop.is_dir():
        desktop = home / ".local" / "share" / "applications"
    desktop.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "afinar", "estudio", "--carpeta", str(folder), "--puerto", str(port)]
    if platform.startswith("win"):
        path = desktop / "afinar estudio.cmd"
        text = "@echo off\r\n" + " ".join(f'"{a}"' for a in argv) + "\r\n"
    elif platform == "darwin":
        path = desktop / "afinar estudio.command"
        text = "#!/bin/sh\n" + " ".join(shlex.quote(a) for a in argv) + "\n"
    else:
        path = desktop / "afinar-estudio.desktop"
        # Terminal=true: the window shows the studio's address and closing it closes the studio (as Ctrl-C does).
        text = ("[Desktop Entry]\nType=Application\nName=afinar estudio\nComment=Afinar un asistente con tus ejemplos\n"
                f"Exec={' '.join(_desktop_quote(a) for a in argv)}\nTerminal=true\nCategories=Education;Science;\n")
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o755)
    os.replace(partial, path)
    return path


def _desktop_quote(arg: str) -> str:
    """An Exec argument as the Desktop Entry spec quotes it: in double quotes, with ", `, $ and \\ escaped."""
    if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
        return arg
    return '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'


def estudio(port: int = 7860, open_browser: bool = True, host: str = "127.0.0.1", folder: str | Path = DEFAULT_FOLDER,
            max_upload_mb: int = 50, new_token: bool = False, desktop_shortcut: bool = False) -> None:
    import logging

    import uvicorn

    from afinar.studio.app import StudioOptions, create_app
    from afinar.studio.workspace import Workspace

    root = Path(folder).expanduser().resolve()
    shown = "127.0.0.1" if host in LOOPBACK else host
    if desktop_shortcut:
        print(f"afinar estudio: acceso directo escrito en {shortcut(root, port)}")
        print("  Ábrelo con doble clic: arranca el estudio, o te lleva al que ya está abierto.")
    if not port_free(host, port):
        token = folder_token(root) if (root / TOKEN_FILE).is_file() and not new_token else None
        if token and running_studio(root, token, port):  # this folder's studio runs already: take the person there
            url = f"http://{shown}:{port}/?token={token}"
            print(f"afinar estudio ya está abierto: {url}")
            if open_browser:
                webbrowser.open(url)
            return
        check_port(host, port)  # E050: someone else's (refused before anything is made)
    workspace = Workspace(root)
    token = folder_token(workspace.root, new=new_token)
    url = f"http://{shown}:{port}/?token={token}"
    app = create_app(workspace, StudioOptions(token=token, port=port, host=host, max_upload_bytes=max_upload_mb * 2**20))
    print(f"afinar estudio: {url}")
    print(f"  carpeta: {workspace.root} (datos, recetas, ejecuciones)")
    print(f"  volver a entrar: este navegador recuerda el acceso {COOKIE_DAYS} días (http://{shown}:{port}/); en otro, "
          "vuelve a ejecutar «afinar estudio» (si ya está abierto, te lleva a él).")
    if host not in LOOPBACK:
        print(f"  aviso: escucha en {host}: cualquiera en tu red que tenga este enlace (con el token) puede usarlo.")
    print("  Ctrl-C para cerrarlo (un entrenamiento en curso sigue; al volver a abrir el estudio lo encuentras).")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def estudio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--puerto", dest="port", type=int)
    p.add_argument("--no-abrir", dest="open_browser", action="store_false",
                   help="no abre el navegador (imprime la dirección)")
    p.add_argument("--host",
                   help="otra dirección que 127.0.0.1 expone el estudio a tu red (con token)")
    p.add_argument("--carpeta", dest="folder",
                   help="dónde guarda datos, recetas y ejecuciones")
    p.add_argument("--max-subida-mb", dest="max_upload_mb", type=int,
                   help="tamaño máximo de un archivo subido")
    p.add_argument("--token-nuevo", dest="new_token", action="store_true",
                   help="otro token para esta carpeta: los enlaces y accesos recordados dejan de valer")
    p.add_argument("--acceso-directo", dest="desktop_shortcut", action="store_true",
                   help="escribe un acceso directo en el escritorio que abre el estudio de esta carpeta sin terminal")
