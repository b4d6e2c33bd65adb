"""The overlays: one row per target, read by render, cli and the launcher. Nothing else asks "which overlay is this?":
a difference between targets is a field here, and a new target is a new row.

  base  the committed manifests/ (jobs/study.yaml): GKE-shaped, L4, images under registry.invalid (never resolves)
  kind  manifests/kind (jobs/smoke.yaml): no GPU, laptop-sized pods, the locally built CPU-variant images, MinIO
  gke   your cluster: your registry and tag (both required), optional spot L4 nodes and a Kueue queue

The resource profiles the overlays use (`gpu`, `cpu`, `kind`) are rows of `PROFILES`: what a pod requests and how
big its emptyDirs are (docs/cluster.md, "Evictions").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorascope.errors import ConfigError

# The committed manifests name this registry: `.invalid` is reserved (RFC 2606) and never resolves, so applying
# them unchanged fails with a DNS error that names it, and no one else's image can ever be pulled.
PLACEHOLDER_REGISTRY = "registry.invalid/lorascope"
# kind: the images built here (the CPU variant: tag <code-version tag>-cpu) and `kind load`ed; `localhost/` is what
# podman names a local build, and no registry anyone could push to
KIND_REGISTRY = "localhost/lorascope"
# The images' variants and their tag suffix (Makefile.images IMAGE_VARIANT reads this table): cuda, the GPU images;
# cpu, the same images on the CPU torch wheel, for kind, laptops and CI
IMAGE_VARIANTS = {"cuda": "", "cpu": "-cpu"}


@dataclass(frozen=True)
class Profile:
    """Container resources and emptyDir sizes of a class of pods. memory limit = request and (unless `cpu_limit`)
    cpu limit = request: QoS Guaranteed. Volume sizes in GiB, except dshm (a memory quantity)."""

    cpu: str
    memory: str
    volumes: dict[str, str | int]
    gpu: str | None = None  # nvidia.com/gpu request = limit
    cpu_limit: str | None = None  # burst above the request (kind: a laptop has no node pressure policy worth keeping)
    memory_by_phase: dict[str, str] = field(default_factory=dict)  # a phase that needs more than `memory`

    def memory_for(self, phase: str) -> str:
        return self.memory_by_phase.get(phase, self.memory)


# Resources. ephemeral-storage request = limit = the disk emptyDirs' sizes + LOGS_GIB (render.resources), within the
# node's allocatable (docs/cluster.md, "Evictions"):
#   g2-standard-8 (8 vCPU, 32 GB, one L4), 200 GB boot disk: allocatable ~7.9 CPU, ~28 GiB memory, ~100 GiB disk
#   e2-standard-8 default pool (CPU phases), 100 GB boot disk: allocatable ~7.9 CPU, ~28 GiB memory, ~44 GiB disk
# The disk emptyDirs' sizes in GiB (hf-cache: stage's from the model on base/gke); tmp and home came out of what was
# the writable layer's 5 GiB before the root filesystem was read-only, so the ephemeral-storage totals did not change.
PROFILES: dict[str, Profile] = {
    "gpu": Profile("6", "24Gi", {"dshm": "4Gi", "hf-cache": 5, "work": 70, "tmp": 2, "home": 1}, gpu="1"),
    "cpu": Profile("2", "12Gi", {"dshm": "1Gi", "hf-cache": 2, "work": 20, "tmp": 2, "home": 1}),
    # kind: a laptop, the smoke study's tiny model. bench: vLLM's CPU engine holds the study's KV cache (2 GiB by
    # default) next to the model
    "kind": Profile("1", "3Gi", {"dshm": "512Mi", "hf-cache": 1, "work": 5, "tmp": 2, "home": 1}, cpu_limit="2",
                    memory_by_phase={"bench": "6Gi"}),
}  # fmt: skip


@dataclass(frozen=True)
class Overlay:
    name: str
    parallelism: int  # default pods at once per GPU Job (capped at completions)
    gpu_profile: str  # PROFILES row of the GPU phases' pods
    cpu_profile: str  # ... and of the CPU phases' pods
    gpu_nodes: bool  # GPU requests, the L4 nodeSelector and toleration, LORASCOPE_REQUIRE_CUDA in GPU pods
    stage_cache_from_model: bool  # the stage pod's HF cache sized from the model (render.model_cache_gib)
    registry: str | None  # default image registry; None: --registry is required
    image_tag_required: bool  # render needs --image-tag (the launcher always has the code version)
    image_variant: str  # IMAGE_VARIANTS: kind runs the CPU-torch images (tag <tag>-cpu)
    pull_policy: str
    store_in_cluster: bool  # MinIO (and its bucket Job) rendered as the S3 store
    cloud_options: bool  # --spot and --queue allowed
    launchable: bool  # a target of `lorascope cluster run`
    study: str  # the study its committed folder is rendered from
    folder: str  # where `lorascope render` writes it (make k8s-render / gke-render)
    setup_hint: str  # where the user learns to create the namespace and Secrets
    placeholder_header: bool = False  # say in every file's header that the images are under registry.invalid

    def default_registry(self) -> str:
        if self.registry is None:
            raise ConfigError(
                f"render: the {self.name} overlay needs --registry (your Artifact Registry repository, e.g. "
                "europe-west4-docker.pkg.dev/my-project/lorascope); the images are not published anywhere"
            )
        return self.registry

    def profile(self, gpu: bool) -> Profile:
        return PROFILES[self.gpu_profile if gpu else self.cpu_profile]

    @property
    def image_tag_suffix(self) -> str:
        return IMAGE_VARIANTS[self.image_variant]

    def image_tag(self, code_version: str) -> str:
        """The one tag rule, for the files `lorascope render` writes (code version: the package version, or
        --image-tag), the launcher (the checkout's code version) and `make images` / `make kind-load` (the same
        function, through Makefile.images): the code version's tag plus the overlay's image variant (kind: -cpu)."""
        from lorascope.runner import image_tag

        return image_tag(code_version) + self.image_tag_suffix


OVERLAY_TABLE: dict[str, Overlay] = {
    o.name: o
    for o in (
        Overlay("base", parallelism=6, gpu_profile="gpu", cpu_profile="cpu", gpu_nodes=True, stage_cache_from_model=True,
                registry=PLACEHOLDER_REGISTRY, image_tag_required=False, image_variant="cuda", pull_policy="IfNotPresent",
                store_in_cluster=False, cloud_options=False, launchable=False, study="jobs/study.yaml",
                folder="manifests", setup_hint="docs/cluster.md, 'Secrets'", placeholder_header=True),
        Overlay("kind", parallelism=2, gpu_profile="kind", cpu_profile="kind", gpu_nodes=False,
                stage_cache_from_model=False, registry=KIND_REGISTRY, image_tag_required=False, image_variant="cpu",
                pull_policy="Never", store_in_cluster=True, cloud_options=False, launchable=True,
                study="jobs/smoke.yaml", folder="manifests/kind", setup_hint="make kind-up"),
        Overlay("gke", parallelism=6, gpu_profile="gpu", cpu_profile="cpu", gpu_nodes=True, stage_cache_from_model=True,
                registry=None, image_tag_required=True, image_variant="cuda", pull_policy="IfNotPresent",
                store_in_cluster=False, cloud_options=True, launchable=True, study="jobs/study.yaml",
                folder="build/gke", setup_hint="docs/cluster.md, 'Secrets'"),
    )
}  # fmt: skip
OVERLAYS = tuple(OVERLAY_TABLE)
LAUNCHABLE = tuple(name for name, o in OVERLAY_TABLE.items() if o.launchable)


def get_overlay(name: str) -> Overlay:
    try:
        return OVERLAY_TABLE[name]
    except KeyError:
        raise ConfigError(f"render: overlay {name!r} is not one of {', '.join(OVERLAYS)}") from None
