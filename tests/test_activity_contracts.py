"""Workflows call activities through contract classes (herald/*/contract.py and friends); the
worker runs the implementations in activities/. Each implementation must subclass its contract
and register every contract method under the same activity name, with the same sync/async kind,
or a workflow would schedule an activity no worker polls for."""

import inspect

import pytest
from temporalio import activity

from herald.analytics.contract import RfmActivitiesContract
from herald.campaigns.contract import CampaignActivitiesContract
from herald.delivery.contract import DeliveryActivitiesContract, WebhookActivitiesContract
from herald.flows.date_triggers import DateTriggerActivitiesContract
from herald.flows.steps import FlowActivitiesContract
from herald.routing.contract import RouterActivitiesContract
from herald.segments.contract import SegmentRefreshActivitiesContract

CONTRACTS = (
    RouterActivitiesContract,
    FlowActivitiesContract,
    DeliveryActivitiesContract,
    WebhookActivitiesContract,
    DateTriggerActivitiesContract,
    CampaignActivitiesContract,
    RfmActivitiesContract,
    SegmentRefreshActivitiesContract,
)


def definitions(cls) -> dict[str, activity._Definition]:
    """The activities the class itself defines (not those it inherits)."""
    found = {}
    for name, member in vars(cls).items():
        if not inspect.isfunction(member):
            continue
        defn = activity._Definition.from_callable(member)
        if defn is not None:
            found[name] = defn
    return found


def implementations(contract) -> list[type]:
    import worker  # noqa: F401 (imports every activity module)

    return [c for c in contract.__subclasses__() if c.__module__.startswith("activities.")]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_every_contract_has_one_implementation_registering_each_activity(contract):
    [implementation] = implementations(contract)
    declared, registered = definitions(contract), definitions(implementation)
    assert declared, f"{contract.__name__} declares no activity"
    for method, defn in declared.items():
        assert method in registered, f"{implementation.__name__}.{method} is not an activity"
        assert registered[method].name == defn.name
        assert registered[method].is_async == defn.is_async


def test_every_activity_class_keeps_to_a_contract():
    import importlib
    import pkgutil

    import activities

    for info in pkgutil.iter_modules(activities.__path__):
        module = importlib.import_module(f"activities.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not definitions(cls):
                continue
            contracts = [c for c in CONTRACTS if issubclass(cls, c)]
            assert contracts, f"{cls.__name__} defines activities without a contract"
            declared = {m for c in contracts for m in definitions(c)}
            assert set(definitions(cls)) == declared, cls.__name__
