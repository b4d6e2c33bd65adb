"""Kubernetes: the study as batch Jobs, or as one JobSet.

* `overlays` -- the targets (base, kind, gke) as one table of dataclasses, and the pods' resource profiles: every
                difference between targets is a field there, never a string check elsewhere.
* `render`   -- a study and a few options -> every object (namespace, the run's study ConfigMap, one Job per phase),
                as plain dicts: the one source of the manifests.
* `manifests` -- those objects (and the JobSet) as the YAML files `lorascope render` writes to `manifests/`.
* `infra`    -- PostgreSQL for HPO, MinIO for kind, example Secrets; `podspec` -- shared security contexts.
* `jobset`   -- the phases as one JobSet chained with dependsOn, and reading it back (`lorascope status RUN --cluster`).
* `status`   -- pure functions on Job and Pod objects (the `kubernetes` client's V1Job / V1Pod): which indexes
                succeeded, failed, run or cannot start, what the launcher does next, which pod to show on failure.
* `launcher` -- `lorascope cluster run|status`: applies the phase Jobs in order through the `kubernetes` client and
                waits on each, or submits the JobSet (`--detach`).

Only `launcher` imports the `kubernetes` client at call time; `render` needs nothing but PyYAML.
"""
