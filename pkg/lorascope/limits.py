"""How large a study may be, and how long its names: each limit derived, here, from what we build out of the study.

Checked at the door (`load_study`: exit 2 naming the field) so that no phase fails on them after hours of work. The
derivations are pinned by tests/test_limits.py against what the code really builds (the renderer's objects, the
store keys and work-dir folders of a real run).

Names
  A task or method name (and a seed) become parts of file and folder names, one path component each:

    store     sanity/<task>-<method>  hpo/<task>-<method>  cells/<cell>  checkpoints/<cell>  reps/<cell>/<task>
    work dir  hpo/<task>-<method>.journal  hpo/<task>-<method>-trial-<n>  train/<cell>  train/<cell>-final
              extract/<cell>/<task>  bench/<backend>/merged-<cell>     with <cell> = <task>-<method>-s<seed>
              and, for a moment, Optuna's journal lock as it is released: hpo/<task>-<method>.journal.lock<uuid4>.rename
              (optuna.storages.journal._file; the longest: 57 characters besides the task and method names)

  A component is at most FILE_NAME_MAX = 255 bytes on every file system we run on (NAME_MAX of ext4, xfs, btrfs,
  overlayfs, tmpfs), so the longest of NAME_TEMPLATES, filled with the study's longest task and method names, its
  widest seed and a 10-digit trial number, must fit. Names are ASCII ([a-z0-9-]), so a character is a byte.
  An S3 key is at most 1024 bytes; the longest key we write is
    runs/<run>/checkpoints/<cell>/checkpoint-<step>/_attempts/<attempt>/<file>
  which, with the cell within FILE_NAME_MAX, a run id that is a label value, an attempt id of at most 49 characters
  (store.BundleWriter: time, host[:24], 8 hex), a 20-digit step and a file of at most 64 bytes below the bundle, is
  at most STORE_KEY_MAX_BELOW_PREFIX (493) bytes plus the store's prefix: the file-name bound binds first.

  The study name becomes the run id `<study>-<hash8>` (runner.default_run_id), which every object of a run carries
  as a label value (`lorascope.dev/run-id`, `app.kubernetes.io/instance`; k8s/render.py): at most LABEL_VALUE_MAX =
  63 characters, so a study name is at most 63 - 1 - 8 = STUDY_NAME_MAX (54). Object names are built from fixed
  words (Jobs `lorascope-<phase>`) or from a hash-suffixed slug of the run id (the ConfigMap, the JobSet), so no other
  study name reaches a Kubernetes name or label.

Size
  The study file travels to the pods in a ConfigMap (k8s/render.study_configmap, key `study.yaml`), whose data may
  hold at most 1 MiB (the API server's limit on a ConfigMap's keys plus values): MAX_STUDY_BYTES = 1 MiB - the key.
  A YAML alias can make a 4 KB file expand to billions of nodes: aliases are expanded within MAX_YAML_NODES, about
  twice what the largest plain file holds (a 1 MiB flow list of one-digit numbers: ~520,000 values), and nesting
  is bounded by MAX_YAML_DEPTH (the deepest field of the schema is 6 levels down: methods.0.sweep.target_modules.0.0).
  See lorascope.studyfile.

Cells
  DEFAULT_MAX_CELLS: a study with more cells (tasks x methods x seeds) is refused unless it says `max_cells: N`. Not a
  hard limit of anything: a sanity limit, far above any study this project runs (the reference study has 18 cells;
  the train Job allows each cell up to 4 L4 hours, k8s/render.INDEX_HOURS, so 10,000 cells may be 40,000 L4 hours),
  so that a slip (a seed list pasted many times over, a sweep with one axis too many) is a one-line refusal with
  the count, not a launch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

FILE_NAME_MAX = 255  # bytes in one path component (NAME_MAX)
LABEL_VALUE_MAX = 63  # a Kubernetes label value (and a DNS-1123 label)
RUN_ID_HASH_CHARS = 8  # runner.default_run_id: <study>-<first 8 hex of the study hash>
STUDY_NAME_MAX = LABEL_VALUE_MAX - 1 - RUN_ID_HASH_CHARS
S3_KEY_MAX = 1024
ATTEMPT_ID_MAX = len("20261123T183551") + 1 + 24 + 1 + 8  # store.BundleWriter's attempt id
BUNDLE_FILE_MAX = 64  # the longest file path below a bundle (adapter/adapter_model.safetensors: 33)
STORE_KEY_MAX_BELOW_PREFIX = (len("runs/") + LABEL_VALUE_MAX + len("/checkpoints/") + FILE_NAME_MAX + len("/checkpoint-")
                              + 20 + len("/_attempts/") + ATTEMPT_ID_MAX + 1 + BUNDLE_FILE_MAX)

CONFIGMAP_DATA_MAX = 1024 * 1024  # a ConfigMap's data: the sum of its keys' and values' bytes
CONFIGMAP_STUDY_KEY = "study.yaml"
MAX_STUDY_BYTES = CONFIGMAP_DATA_MAX - len(CONFIGMAP_STUDY_KEY)
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 1_000_000

DEFAULT_MAX_CELLS = 10_000

TRIAL_DIGITS = 10  # an Optuna trial number, given room for 10 digits
UUID_CHARS = 36  # str(uuid.uuid4())
# every file or folder name built from study names, and where (see the module docstring)
NAME_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{task}-{method}", "store sanity/ and hpo/ bundles"),
    ("{task}-{method}-s{seed}", "store cells/, checkpoints/ and reps/ bundles; work dir train/ and extract/"),
    ("{task}-{method}-s{seed}-final", "work dir train/ (the saved artifact before its commit)"),
    ("{task}-{method}.journal", "work dir hpo/ (the Optuna journal)"),
    ("{task}-{method}.journal.lock", "work dir hpo/ (the journal's lock)"),
    ("{task}-{method}.journal.lock{uuid}.rename", "work dir hpo/ (Optuna renames the journal's lock to release it)"),
    ("{task}-{method}-trial-{trial}", "work dir hpo/ (one trial's Trainer folder)"),
    ("merged-{task}-{method}-s{seed}", "work dir bench/<backend>/ (the merged model the bench serves)"),
)


def longest_file_name(tasks: Sequence[str], methods: Sequence[str], seeds: Iterable[int]) -> tuple[int, str, str]:
    """(length, name, where) of the longest file or folder name NAME_TEMPLATES give for these names: the longest task
    and method names with the widest seed (every cell is built, so that combination exists)."""
    task = max(tasks, key=len)
    method = max(methods, key=len)
    seed = max(seeds, key=lambda s: len(str(s)))
    trial, uuid = "9" * TRIAL_DIGITS, "0" * UUID_CHARS
    best = max(
        ((t.format(task=task, method=method, seed=seed, trial=trial, uuid=uuid), where) for t, where in NAME_TEMPLATES),
        key=lambda x: len(x[0].encode()),
    )
    return len(best[0].encode()), best[0], best[1]


def method_name_max(tasks: Sequence[str], seeds: Iterable[int]) -> int:
    """The longest method name that keeps every file name within FILE_NAME_MAX, for these tasks and seeds."""
    length, _, _ = longest_file_name(tasks, [""], seeds)
    return FILE_NAME_MAX - length


def cells_count(n_tasks: int, n_methods: int, n_seeds: int) -> int:
    return math.prod((n_tasks, n_methods, n_seeds))


def too_many_cells(n_tasks: int, n_methods: int, n_seeds: int, max_cells: int, at_least: bool = False) -> str | None:
    """The refusal of a study over its cell limit, or None."""
    n = cells_count(n_tasks, n_methods, n_seeds)
    if n <= max_cells:
        return None
    count = f"{'at least ' if at_least else ''}{n:,} cells ({n_tasks} task(s) x {n_methods} method(s) x {n_seeds:,} seed(s))"
    how = ("the default sanity limit" if max_cells == DEFAULT_MAX_CELLS else "the study's max_cells")
    return (f"the study has {count}, over {how} of {max_cells:,}; if you mean it, say so in the study: "
            f"max_cells: {n}")  # fmt: skip
