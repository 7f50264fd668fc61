"""Names shared by the domain and the Celery side (``workers`` imports them from here)."""

from __future__ import annotations

#: Create the Codegen run of a submitted row (queue ``agent_runs``).
TASK_CREATE = "aiw.agent_run.create"
#: Send a pending follow-up prompt (queue ``agent_runs``).
TASK_RESUME = "aiw.agent_run.resume"
#: One poll round: started by the tick the last round scheduled while runs are followed
#: (``wakeup``), and by beat every ``AIW_AGENT_POLL_SWEEP_INTERVAL`` seconds as the
#: safety net; a round short of budget goes on in a message to itself (queue
#: ``agent_runs``).
TASK_POLL = "aiw.agent_run.poll"

#: The key of the unique marker ai-worker adds to a created run's Codegen metadata.
MARKER_KEY = "aiw_run_marker"
#: ``agent_runs.source``.
SOURCE_SUBMITTED = "submitted"
SOURCE_TRACKED = "tracked"
SOURCE_AI_REQUEST = "ai_request"  # started to answer a queued AI request
