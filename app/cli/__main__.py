"""``python -m app.cli``: the ``aiw`` command (the metrics exporter of ``aiw up`` runs so)."""

from app.cli import main

main()
