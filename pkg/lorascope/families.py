"""Moved to lorascope.models.families; this name is the same module (an alias) for callers not yet updated."""

import sys

from lorascope.models import families

sys.modules[__name__] = families
