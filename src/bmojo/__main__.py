"""`python -m bmojo ...`: the `bmojo` command (bmojo.cli)."""

from .cli import main

raise SystemExit(main())
