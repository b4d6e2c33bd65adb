"""Moved to lorascope.models.hub; this name is the same module (an alias) for callers not yet updated."""

import sys

from lorascope.models import hub

sys.modules[__name__] = hub
