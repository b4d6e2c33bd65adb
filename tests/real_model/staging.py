"""Moved to tests/fixtures/smollm2.py (issue 22 step 8); this re-export keeps older imports working."""
from tests.fixtures.smollm2 import *  # noqa: F401,F403
