"""Exports of a tuned model. Each back end lives in its own module and is imported lazily."""
