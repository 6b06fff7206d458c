"""What every resource has: kind, version and metadata."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from certgate.api.names import ResourceName, Time

__all__ = ["Metadata", "Model", "ResourceName"]


class Model(BaseModel):
    """Immutable and strict: unknown fields are refused, never silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Metadata(Model):
    name: ResourceName
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    expires: Time | None = None
    # Set by the store on read; ignored on write except for conditional updates.
    revision: int = 0
