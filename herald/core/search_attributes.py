"""Typed keys for Herald's custom search attributes (pure: safe to import in workflows)."""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

KIND = SearchAttributeKey.for_keyword("HeraldKind")
CAMPAIGN_ID = SearchAttributeKey.for_keyword("HeraldCampaignId")
FLOW_ID = SearchAttributeKey.for_keyword("HeraldFlowId")
PROFILE_ID = SearchAttributeKey.for_keyword("HeraldProfileId")
STEP = SearchAttributeKey.for_keyword("HeraldStep")


def attributes(**values: str) -> TypedSearchAttributes:
    """attributes(kind="router") -> TypedSearchAttributes with HeraldKind=router."""
    keys = {
        "kind": KIND,
        "campaign_id": CAMPAIGN_ID,
        "flow_id": FLOW_ID,
        "profile_id": PROFILE_ID,
        "step": STEP,
    }
    return TypedSearchAttributes([SearchAttributePair(keys[k], v) for k, v in values.items()])
