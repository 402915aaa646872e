"""Sentinel Hub credentials: where they come from, and the error that names their origin.

Credentials come only from env SH_CLIENT_ID/SH_CLIENT_SECRET or a sentinelhub config profile
(read, never written); they never appear in params, logs or error messages (Credentials'
repr shows only where they came from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canopy.errors import UserError
from canopy.etl.params import SentinelHubParams

ENV_ID = "SH_CLIENT_ID"
ENV_SECRET = "SH_CLIENT_SECRET"



@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    origin: str  # where they came from, for error messages (never the values)

    def __repr__(self) -> str:  # never show the values
        return f"Credentials(origin={self.origin!r})"


def read_credentials(params: SentinelHubParams) -> Credentials:
    """From env SH_CLIENT_ID/SH_CLIENT_SECRET, else a sentinelhub config profile (read only)."""
    env_id, env_secret = os.environ.get(ENV_ID, ""), os.environ.get(ENV_SECRET, "")
    if env_id and env_secret:
        return Credentials(env_id, env_secret, f"env {ENV_ID}/{ENV_SECRET}")
    if env_id or env_secret:
        present, absent = (ENV_ID, ENV_SECRET) if env_id else (ENV_SECRET, ENV_ID)
        raise UserError(f"{present} is set but {absent} is not: set both (or neither, to use a profile)")
    return _profile_credentials(params)


def _profile_credentials(params: SentinelHubParams) -> Credentials:
    from sentinelhub import SHConfig
    from sentinelhub.config import DEFAULT_PROFILE, SH_PROFILE_ENV_VAR

    profile = params.profile or os.environ.get(SH_PROFILE_ENV_VAR) or DEFAULT_PROFILE
    location = Path(SHConfig.get_config_location())
    entry = _read_profiles(location).get(profile)
    if isinstance(entry, dict) and entry.get("sh_client_id") and entry.get("sh_client_secret"):
        return Credentials(
            str(entry["sh_client_id"]), str(entry["sh_client_secret"]),
            f"sentinelhub config profile {profile!r} in {location}",
        )
    if params.profile is not None:
        raise UserError(
            f"sentinelhub config profile {profile!r} (etl.sentinelhub.profile) has no sh_client_id and "
            f"sh_client_secret in {location}: add them with `sentinelhub.config --profile {profile} "
            f"--sh_client_id ... --sh_client_secret ...`, or set {ENV_ID} and {ENV_SECRET}"
        )
    raise UserError(
        f"no Sentinel Hub credentials: set {ENV_ID} and {ENV_SECRET} to an OAuth client of your "
        "account (Copernicus Data Space: Sentinel Hub dashboard > User settings > OAuth clients), "
        "or name a sentinelhub config profile holding them in etl.sentinelhub.profile"
    )


def _read_profiles(location: Path) -> dict[str, Any]:
    """The sentinelhub config file's profiles, read directly: SHConfig would rewrite the file."""
    if not location.is_file():
        return {}
    import tomli  # a sentinelhub dependency

    try:
        return tomli.loads(location.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(
            f"cannot read the sentinelhub config file {location}: fix it, or set {ENV_ID} and "
            f"{ENV_SECRET}"
        ) from None


def credentials_error(answer: int | str, path: str, creds: Credentials) -> UserError:
    """`answer` is an HTTP status or an OAuth error code such as 'unauthorized_client'."""
    what = f"HTTP {answer}" if isinstance(answer, int) else answer
    extra = " (or the account lacks access or quota for this request)" if answer == 403 else ""
    return UserError(
        f"Sentinel Hub refused the credentials ({what} from {path}){extra}: set {ENV_ID} "
        f"and {ENV_SECRET} to a valid OAuth client for this deployment, or a sentinelhub config "
        f"profile in etl.sentinelhub.profile; the ones used came from {creds.origin}"
    )
