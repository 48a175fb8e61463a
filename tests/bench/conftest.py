"""The load generator is tested against a real `ember serve`: the server tests' fixture."""

from tests.serve.conftest import server

__all__ = ["server"]
