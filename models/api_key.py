"""API keys, stored as SHA-256 digests; the plaintext is shown once, at creation."""

from datetime import datetime

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from models.enums import ApiKeyKind
from models.types import UTCDateTime, utcnow


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    kind: ApiKeyKind = Field(sa_type=String(16))
    # The first characters of the key, to find the row without scanning every digest.
    lookup: str = Field(max_length=32, unique=True)
    digest: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
