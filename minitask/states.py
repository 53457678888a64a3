"""Task states by name, as Celery's ``celery.states`` gives them, for code written against it
(``from minitask import states``; ``if result.state == states.SUCCESS``).

A task moves through PENDING (nothing known yet), RECEIVED, STARTED and RETRY to one of the
ready states SUCCESS, FAILURE and REVOKED (`minitask.result` says what each means). A task's
own states (``update_state(state="PROGRESS")``) are any other name. Celery's IGNORED and
REJECTED are never stored by minitask; their names are here so that code comparing with
them runs.
"""

from .protocol import READY_STATES as _READY, STATES as _STATES

__all__ = ["PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED",
           "IGNORED", "REJECTED", "ALL_STATES", "READY_STATES", "UNREADY_STATES",
           "EXCEPTION_STATES", "PROPAGATE_STATES"]

PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = _STATES
IGNORED, REJECTED = "IGNORED", "REJECTED"

ALL_STATES = frozenset(_STATES)
READY_STATES = _READY
UNREADY_STATES = frozenset((PENDING, RECEIVED, STARTED, REJECTED, RETRY))
EXCEPTION_STATES = frozenset((RETRY, FAILURE, REVOKED))
PROPAGATE_STATES = frozenset((FAILURE, REVOKED))
