"""Planning a run before it starts: what fits and how long it takes (see afinar plan)."""
