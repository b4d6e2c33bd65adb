"""Moved to tests/fixtures/manifests.py (issue 22 step 8); this re-export keeps older imports working."""
from tests.fixtures.manifests import *  # noqa: F401,F403
