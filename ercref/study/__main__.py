"""``python -m ercref.study <study> [--hours H] [--workers N] [--status] [--report] ...``: see ercref.study.runner."""
from .runner import main

raise SystemExit(main())
