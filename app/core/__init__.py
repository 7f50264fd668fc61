"""The bottom layer: what every other part of ``app`` shares and nothing here imports.

- ``errors``: the one error tree (providers, jobs, agent runs, publishing);
- ``redact``: the one redaction step every error passes before it is stored, printed,
  logged or sent (configured secrets and the shapes of secrets);
- ``retry``: the retry policy (which errors, how long to wait);
- ``transfer``: the limits of one HTTP call (a total deadline, a cap on the answer);
- ``publisher``: the port through which the domain hands work to the queue;
- ``keys``: every Redis key name, and where Redis is;
- ``cooldown``, ``budget``, ``lease``: the small Redis-backed coordination pieces
  (a 429's shared cooldown, Codegen's shared request budget, "one of us at a time").

It imports only ``app.config`` and ``app.db`` (an import-linter ``layers`` contract).
"""
