"""Moved to tests/fixtures/k8s_objects.py (issue 22 step 8); this re-export keeps older imports working."""
from tests.fixtures.k8s_objects import *  # noqa: F401,F403
