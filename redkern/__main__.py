"""``python -m redkern``: the command line (see ``redkern.cli``)."""

from .cli import main

raise SystemExit(main())
