"""``python -m taskmesh``: the same as the ``taskmesh`` command."""

from .cli import main

raise SystemExit(main())
