"""Moved to tests/fixtures/tiny_model.py (issue 22 step 8); this re-export keeps older imports working."""
from tests.fixtures.tiny_model import *  # noqa: F401,F403
