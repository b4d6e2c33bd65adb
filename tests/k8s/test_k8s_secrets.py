"""No secret values in the repository: Secrets in manifests/ hold placeholders only, and no file holds something
that looks like a real key."""

from __future__ import annotations

import re
import subprocess

from lorascope.k8s import infra, render
from tests.fixtures.manifests import REPO, load_objects, manifest_files

SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}
PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCS HMAC secret": re.compile(r"\bGOOG[0-9A-Z]{20,}\b"),
    "password in a URL": re.compile(r"\b[a-z0-9+]+://[^/\s:@]+:(?!REPLACE_ME@|\$\$pw@|\$pw@|<|\{)[^@\s/]{6,}@"),
}


def repo_files():
    """Tracked and untracked-but-not-ignored files (what a commit would contain)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [REPO / f for f in out if f and (REPO / f).is_file()]


def test_secrets_in_manifests_hold_only_placeholders():
    found = [(p, o) for p in manifest_files() for o in load_objects(p) if o["kind"] == "Secret"]
    secrets = [o for _, o in found]
    assert {s["metadata"]["name"] for s in secrets} == {render.S3_SECRET, render.POSTGRES_SECRET}
    # examples live out of the folders a user applies: not under kustomization.yaml's resources
    assert {p.parent.name for p, _ in found} == {"examples"}
    for folder in (REPO / "manifests", REPO / "manifests" / "kind"):
        [k] = load_objects(folder / "kustomization.yaml")
        assert not [r for r in k["resources"] if r.startswith(("examples/", "jobset/"))]
    for s in secrets:
        assert "data" not in s  # no base64 blobs to hide a value in
        for key, value in s["stringData"].items():
            if key in SECRET_KEYS:
                assert value == infra.PLACEHOLDER, f"{s['metadata']['name']}.{key}"
            assert "REPLACE_ME" in value or key not in SECRET_KEYS
    storage = next(s for s in secrets if s["metadata"]["name"] == render.POSTGRES_SECRET)["stringData"]
    assert (
        storage["LORASCOPE_OPTUNA_STORAGE"] == "postgresql+psycopg2://optuna:REPLACE_ME@lorascope-postgres:5432/optuna"
    )


def test_no_file_in_the_repository_contains_a_key():
    hits = []
    for path in repo_files():
        if path.suffix in {".png", ".pdf", ".safetensors", ".bin", ".pt", ".npz", ".npy", ".parquet", ".arrow"}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for what, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                hits.append(f"{path.relative_to(REPO)}: {what}: {m.group(0)[:12]}...")
    assert hits == []


def test_the_scanner_would_catch_a_real_looking_key():
    # built from pieces so that this file itself does not hold a match
    sample = (
        "AWS_ACCESS_KEY_ID=" + "AKIA" + "IOSFODNN7EXAMPLE\n" + "postgresql://optuna:" + "s3cr3tpassw0rd" + "@db:5432/x"
    )
    assert PATTERNS["AWS access key id"].search(sample)
    assert PATTERNS["password in a URL"].search(sample)
    assert not PATTERNS["password in a URL"].search("postgresql+psycopg2://optuna:REPLACE_ME@lorascope-postgres:5432/x")
