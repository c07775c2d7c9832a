"""Built-in metrics. Only these may be a campaign's conversion metric; any other name is custom."""

BUILTIN_METRICS = (
    "Placed Order",
    "Ordered Product",
    "Fulfilled Order",
    "Cancelled Order",
    "Refunded Order",
    "Started Checkout",
    "Added to Cart",
    "Viewed Product",
    "Active on Site",
    "Received Email",
    "Opened Email",
    "Clicked Email",
    "Bounced Email",
    "Marked Email as Spam",
    "Unsubscribed",
    "Received SMS",
    "Clicked SMS",
    "Failed to Deliver SMS",
    "Unsubscribed from SMS",
    "Received WhatsApp",
    "Clicked WhatsApp",
    "Received Push",
    "Opened Push",
    "Subscribed to List",
)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_METRICS
