"""The chat page served at `/` by `afinar serve` (plain HTML + JS, no build step)."""
