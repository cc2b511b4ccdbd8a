"""``python -m redkern``: the command line (see ``redkern.cli``)."""

from .cli import main

if __name__ == "__main__":  # not when a spawned process (a Dask worker: --scheduler local:N) re-imports it
    raise SystemExit(main())
