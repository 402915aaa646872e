"""Base class for every params section: unknown keys are errors, values are checked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# A switch whose `auto` the stage resolves for the device it runs on.
Auto = Literal["auto", "on", "off"]


class StrictModel(BaseModel):
    """A params section. A typo in a key fails instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
