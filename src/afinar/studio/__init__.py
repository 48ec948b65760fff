"""`afinar estudio`: the local Spanish web app (Datos → Modelo → Entrenar → Evaluar → Exportar → Usar).

Components apart from the thin app that composes them: `workspace` (the studio's folder and what a run folder
says about itself), `jobs` (one CLI command at a time in its own process), `events` (server-sent events read from
the job's files), `cards` (the printable summary and the blind rating), `app` (FastAPI routes and the security
guard), `launch` (the command). Only `launch` is imported by cli.py, lazily.
"""
