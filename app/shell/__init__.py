"""The operator shell: what runs and shows ai-worker on a machine, under the ``aiw``
command (``app.cli``) and above the domain.

``topology`` (which database and broker, where the data lives), ``supervisor`` (child
processes, their logs, a clean stop), ``embedded_server`` (the embedded broker's
process), ``runtime`` (the command lines of the worker, beat, Flower and the metrics
exporter, and ``aiw up``), ``metrics`` (the Prometheus exporter), ``tables`` and
``display`` (what the commands print), ``demo`` (the guided tour). Nothing is imported
here: import the module you need.
"""
