"""Settings: renamed variables fail loudly instead of silently falling back."""

from __future__ import annotations

import pytest

from semflow.config import load_settings
from semflow.errors import SettingsError


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("SEMFLOW_MODEL_PATH", "SEMFLOW_EMBEDDER_PATH"),
        ("SEMFLOW_MODEL_NAME", "SEMFLOW_EMBEDDER_NAME"),
    ],
)
def test_a_renamed_variable_is_an_error_naming_the_new_one(monkeypatch, old, new):
    monkeypatch.setenv(old, "/models/mine")
    with pytest.raises(SettingsError, match=f"{old} is now {new}"):
        load_settings()


def test_an_embedder_name_cannot_hold_a_version_separator(monkeypatch):
    monkeypatch.setenv("SEMFLOW_EMBEDDER_NAME", "mini@v2")
    with pytest.raises(SettingsError, match="SEMFLOW_EMBEDDER_NAME"):
        load_settings()
