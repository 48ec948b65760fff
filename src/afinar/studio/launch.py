"""`afinar estudio`: prints the studio's address (with a token made for this launch), opens the browser there and
serves until Ctrl-C. Jobs it started keep running after it ends (their own processes); a studio started again
adopts them."""
from __future__ import annotations

import secrets
import socket
import threading
import webbrowser
from pathlib import Path

from afinar.errors import AfinarError
from afinar.inference.server import LOOPBACK

DEFAULT_FOLDER = "afinar-estudio"


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AfinarError("E050", f"no se puede escuchar en {host}:{port} ({exc.strerror or exc}): "
                              "el puerto está ocupado, quizá por otro estudio abierto.",
                              hint=f"cierra el otro o usa otro puerto: afinar estudio --puerto {port + 1}") from None


def estudio(port: int = 7860, open_browser: bool = True, host: str = "127.0.0.1", folder: str | Path = DEFAULT_FOLDER,
            max_upload_mb: int = 50) -> None:
    import logging

    import uvicorn

    from afinar.studio.app import StudioOptions, create_app
    from afinar.studio.workspace import Workspace

    check_port(host, port)
    token = secrets.token_urlsafe(24)
    workspace = Workspace(Path(folder))
    app = create_app(workspace, StudioOptions(token=token, port=port, host=host, max_upload_bytes=max_upload_mb * 2**20))
    shown = "127.0.0.1" if host in LOOPBACK else host
    url = f"http://{shown}:{port}/?token={token}"
    print(f"afinar estudio: {url}")
    print(f"  carpeta: {workspace.root} (datos, recetas, ejecuciones)")
    if host not in LOOPBACK:
        print(f"  aviso: escucha en {host}: cualquiera en tu red que tenga este enlace (con el token) puede usarlo.")
    print("  Ctrl-C para cerrarlo (un entrenamiento en curso sigue; al volver a abrir el estudio lo encuentras).")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    uvicorn.run(app, host=host, port=port, log_level="warning")
