"""What every resource has: kind, version and metadata."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,252}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must start with a letter or digit and hold only letters, digits and . _ @ + -"
        )
    return value


ResourceName = Annotated[str, AfterValidator(_check_name)]


class Model(BaseModel):
    """Immutable and strict: unknown fields are refused, never silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Metadata(Model):
    name: ResourceName
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    expires: datetime | None = None
    # Set by the store on read; ignored on write except for conditional updates.
    revision: int = 0
