"""Shipped recipes (YAML), importable as package data so `afinar demo` works from any folder."""
