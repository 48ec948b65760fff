"""Data: read and check JSONL (formats, validate), split it (split), and render it for training (templates)."""
