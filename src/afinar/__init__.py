"""afinar: de un JSONL de ejemplos a un asistente pequeño que se puede usar."""
__version__ = "0.1.0"
