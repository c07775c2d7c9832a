"""How a workflow tells an activity that failed for good from one that may succeed later.

Pure (Temporal's exception types only), so workflows import it; the activity side that marks
errors permanent is herald/core/activity_errors.py.
"""

from temporalio.exceptions import ActivityError, ApplicationError

PERMANENT_ERROR_TYPE = "PermanentError"
MESSAGE_CHARS = 500


def is_permanent(error: BaseException) -> bool:
    """Did this activity fail for good (non-retryable), rather than time out?

    A failed activity raises ActivityError with the failure as its cause; a failed local
    activity raises the ApplicationError itself.
    """
    cause = error.cause if isinstance(error, ActivityError) else error
    return isinstance(cause, ApplicationError) and cause.non_retryable


def error_message(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    return str(cause)[:MESSAGE_CHARS]
