"""Fixtures shared by the Sentinel Hub tests: the stand-in server on 127.0.0.1 and its
credentials in the environment."""

import pytest

from tests.etl.sh_standin import StandIn


@pytest.fixture()
def standin():
    with StandIn() as server:
        yield server


@pytest.fixture()
def creds(monkeypatch, standin):
    monkeypatch.setenv("SH_CLIENT_ID", standin.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", standin.client_secret)
