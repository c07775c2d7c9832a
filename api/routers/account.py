"""Account settings: timezone, channels, smart-sending windows, quiet hours, frequency caps,
delivery guarantees."""

from fastapi import APIRouter, Depends

from api.deps import EngineDep, require_private_key
from herald.core.db import session_scope
from models.account import Account
from models.account_dto import AccountSettings, AccountUpdate
from models.types import utcnow

router = APIRouter(
    prefix="/v1/account", tags=["account"], dependencies=[Depends(require_private_key)]
)


def _public(account: Account) -> AccountSettings:
    return AccountSettings.model_validate(account.model_dump())


@router.get("", summary="Account settings")
def get_account(engine: EngineDep) -> AccountSettings:
    with session_scope(engine) as session:
        return _public(session.get(Account, 1))


@router.patch("", summary="Change account settings (only the fields sent)")
def patch_account(body: AccountUpdate, engine: EngineDep) -> AccountSettings:
    with session_scope(engine) as session:
        account = session.get(Account, 1)
        changes = body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        if "smart_sending_hours" in changes:
            changes["smart_sending_hours"] = {
                **account.smart_sending_hours,
                **changes["smart_sending_hours"],
            }
        if "frequency_caps" in changes:
            changes["frequency_caps"] = {
                ch: {k: v for k, v in cap.items() if v is not None}
                for ch, cap in changes["frequency_caps"].items()
            }
        if "delivery_guarantees" in changes:
            # Each channel sent replaces that channel's overrides ({} restores the defaults).
            merged = {**account.delivery_guarantees, **changes["delivery_guarantees"]}
            changes["delivery_guarantees"] = {ch: kinds for ch, kinds in merged.items() if kinds}
        for name, value in changes.items():
            setattr(account, name, value)
        account.updated_at = utcnow()
        session.add(account)
        return _public(account)
