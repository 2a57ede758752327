"""``python -m parsl_flows``: the command line (see :mod:`parsl_flows.cli`)."""

from .cli import main

raise SystemExit(main())
