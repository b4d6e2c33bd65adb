"""Moved to lorascope.models.smollm2; this name is the same module (an alias), and `python -m lorascope.smollm2 fetch`
(the Makefile's install-real-model, docs/real-model.md) still runs its command line."""

import sys

from lorascope.models import smollm2

if __name__ == "__main__":
    raise SystemExit(smollm2.main())
sys.modules[__name__] = smollm2
