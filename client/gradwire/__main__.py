"""``python -m gradwire ...``: the same as the ``gradwire`` command."""

from gradwire.cli import main

raise SystemExit(main())
