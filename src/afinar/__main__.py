"""`python -m afinar …` = `afinar …`; also what `torchrun -m afinar train RECIPE` and `accelerate launch -m afinar` run."""
from afinar.cli import main

raise SystemExit(main())
