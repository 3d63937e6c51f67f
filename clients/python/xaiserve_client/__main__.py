"""``python -m xaiserve_client`` runs the ``xaiserve`` command."""

from xaiserve_client.cli import main

raise SystemExit(main())
