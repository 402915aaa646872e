"""Base class for every params section: unknown keys are errors, values are checked."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# The tile sides (px) Canopy handles: etl.tile_size's range, which `canopy sample` also checks
# an export's tile_size against (without loading etl's schema).
TILE_SIZE_MIN, TILE_SIZE_MAX = 8, 4096

# A switch whose `auto` the stage resolves for the device it runs on.
Auto = Literal["auto", "on", "off"]


class StrictModel(BaseModel):
    """A params section. A typo in a key fails instead of being silently ignored, and so does
    a value of the wrong kind that pydantic would convert: `true` for a number, `'8'` for an
    integer, `1e30` (a float) for an integer, `.inf` or `.nan` for a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_conversion(cls, value: Any, info: ValidationInfo) -> Any:
        accepted = _scalar_types(cls.model_fields[info.field_name].annotation)
        if object in accepted:
            return value  # not a plain scalar field: its own type checks it
        if isinstance(value, bool):
            if bool not in accepted:
                raise ValueError(f"expected {_kind(accepted)}, got {str(value).lower()}")
        elif isinstance(value, str):
            if str not in accepted and accepted & {int, float}:
                raise ValueError(f"expected {_kind(accepted)}, got the text {value[:40]!r}")
        elif isinstance(value, float) and float not in accepted and int in accepted:
            raise ValueError(f"expected an integer, got {value!r}")
        return value


def _scalar_types(annotation: Any) -> set[type]:
    """The plain types a field takes (int, float, bool, str, None's type), or {object} when
    it takes anything else (lists, models, dates...)."""
    if annotation in (int, float, bool, str, type(None)):
        return {annotation}
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(choice) for choice in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _scalar_types(typing.get_args(annotation)[0])
    return {object}


def _kind(accepted: set[type]) -> str:
    if float in accepted:
        return "a number"
    if int in accepted:
        return "an integer"
    return "text"
