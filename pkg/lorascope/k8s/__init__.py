"""Kubernetes: the study as batch Jobs.

* `render`   -- a study and a few options -> the manifests (namespace, study ConfigMap, one Job per phase, PostgreSQL for
                HPO, MinIO for kind), as plain dicts; `lorascope render` writes them to `manifests/`.
* `status`   -- pure functions on Job and Pod objects (the `kubernetes` client's V1Job / V1Pod): which indexes
                succeeded, failed or run, what the launcher does next, which pod to show when a phase fails.
* `launcher` -- `lorascope cluster run|status`: applies the phase Jobs in order through the `kubernetes` client and
                waits on each.

Only `launcher` imports the `kubernetes` client at call time; `render` needs nothing but PyYAML.
"""
