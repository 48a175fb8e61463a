from __future__ import annotations

import pytest

from ember.model.loader import LoadedModel


@pytest.fixture(scope="module", params=["tiny", pytest.param("default", marks=pytest.mark.slow)])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    """The tiny fixture model, then the real default model (slow): for the invariance tests
    worth running on the real model's shapes and quantised weights too."""
    loaded: LoadedModel = request.getfixturevalue(f"{request.param}_model")
    return loaded
