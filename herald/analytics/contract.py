"""What the analytics workflows and activities exchange (pure)."""

# The RFM activity raises this error type for input no retry can fix; the workflow lists it as
# non-retryable too.
INVALID_RFM_INPUT = "InvalidRfmInput"
