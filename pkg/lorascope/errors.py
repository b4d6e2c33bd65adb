"""Errors and the exit codes they map to.

Exit codes (documented in README.md and used by the Kubernetes podFailurePolicy):
  0  done
  1  any other failure (retried by the Job: preemption, transient store errors, a crashed trainer)
  2  bad config or usage: the Job fails that index at once, nothing expensive has run
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class LorascopeError(Exception):
    """A failure that is not the user's config: exit 1."""

    exit_code = EXIT_FAILURE


class ConfigError(LorascopeError):
    """Bad study, bad arguments, missing prerequisites: exit 2 before any model loads."""

    exit_code = EXIT_CONFIG


class StoreError(LorascopeError):
    """The store cannot be reached or used (wrong keys, missing bucket, unreachable endpoint): exit 1."""


class IntegrityError(StoreError):
    """A stored object does not match the checksum its commit recorded."""
