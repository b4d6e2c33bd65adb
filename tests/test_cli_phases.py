"""The CLI reads its phase facts from lorascope.phases (help text), and the commands that need no model never
import torch: the slim images (stage's downloads aside: drift, report) and a laptop with `lorascope[k8s]` run them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lorascope import cli
from lorascope.phases import PHASE_ORDER, get_phase
from tests.fixtures.crafted_runs import craft_run
from tests.fixtures.studies import REPO

SMOKE = REPO / "jobs" / "smoke.yaml"


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_top_level_help_lists_each_phase_with_its_description(capsys):
    text = _help(capsys)
    for name in PHASE_ORDER:
        assert f"{name} {get_phase(name).description}" in text, name


@pytest.mark.parametrize("name", PHASE_ORDER)
def test_phase_help_says_what_it_reads_writes_and_needs_first(name, capsys):
    phase = get_phase(name)
    text = _help(capsys, name)
    assert phase.description in text
    assert "reads: " + "; ".join(phase.reads) in text
    assert "writes: " + "; ".join(phase.writes) in text
    assert "run first: " + (", ".join(phase.requires) or "none (the first phase)") in text
    assert ("gpu: yes" if phase.gpu else "gpu: no") in text


def test_phase_facts_are_the_pipeline_facts():
    """requires names only earlier phases; every phase but stage reads the bundle of a phase it requires; the
    writes pattern's first part is the bundle prefix its indexes commit."""
    from lorascope.study import load_study

    study = load_study(REPO / "jobs" / "study.yaml")
    for i, name in enumerate(PHASE_ORDER):
        p = get_phase(name)
        assert all(PHASE_ORDER.index(r) < i for r in p.requires), name
        prefixes = {b.split("/")[0] for b in p.bundles(study)}
        assert prefixes == {w.split("/")[0] for w in p.writes if "(while" not in w}, name
    assert get_phase("extract").requires == ("stage", "train") and get_phase("report").requires == ("drift",)
    assert get_phase("hpo").bundles(study)[:2] == ["hpo/mrpc-full", "hpo/mrpc-lora"]
    assert [get_phase("hpo").unit(study, i) for i in (0, 2, 3)] == ["mrpc-full/w0", "mrpc-full/w2", "mrpc-lora/w0"]


# ------------------------------------------------------------------------------------------------ no torch
_PROBE = """
import sys
from lorascope.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:  # --help
    rc = exc.code
print("torch_loaded=%s" % ("torch" in sys.modules), file=sys.stderr)
sys.exit(rc)
"""


def _probe(argv: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    import os

    e = {**os.environ, "PYTHONPATH": str(REPO / "pkg"), **env}
    return subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=300, env=e,
                          cwd=tmp_path)  # fmt: skip


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notorch")
    ctx = craft_run(folder, lora="mixed", full="noise")
    return folder, ctx


def test_commands_that_need_no_model_import_no_torch(crafted, tmp_path):
    """grid, --help, drift (a real run on crafted reps), report, status, pull and `report DIR`, each in a fresh
    interpreter: torch is never imported. (`validate` is not here: its LoRA target_modules check builds the model on
    the meta device, which needs torch and transformers.)"""
    folder, ctx = crafted
    store = ctx.store.url
    work = str(tmp_path / "work")
    pulled = tmp_path / "pulled"
    commands = [
        ["grid", str(SMOKE)],
        [],  # --help, below
        ["drift", "--store", store, "--run-id", ctx.run_id, "--work-dir", work],
        ["report", "--store", store, "--run-id", ctx.run_id, "--work-dir", work],
        ["status", ctx.run_id, "--store", store],
        ["pull", ctx.run_id, "--store", store, "--to", str(pulled)],
        ["report", str(pulled), "--work-dir", work],  # committed in the pulled folder: skipped, delivered
        ["drift", "--help"],
    ]
    for argv in commands:
        r = _probe(argv or ["--help"], tmp_path, LORASCOPE_REPORT_DIR=str(tmp_path / "delivered"))
        assert r.returncode == 0, (argv, r.stderr[-3000:])
        assert "torch_loaded=False" in r.stderr, (argv, r.stderr[-3000:])
    assert ctx.committed("drift") and ctx.committed("report")
    assert (tmp_path / "delivered" / "ANALYSIS_REPORT.md").is_file()


def test_the_probe_sees_torch_when_a_command_imports_it(tmp_path):
    """The probe can fail: a command that imports torch is reported as such."""
    code = _PROBE.replace("rc = main(sys.argv[1:])", "import torch; rc = 0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and re.search(r"torch_loaded=True", r.stderr), r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ no import cycle
def test_k8s_cli_does_not_import_the_main_cli():
    """lorascope.cli registers lorascope.k8s.cli; the k8s side never imports lorascope.cli back (no cycle)."""
    code = ("import sys; import lorascope.k8s.cli as k; import argparse; "
            "p = argparse.ArgumentParser(); k.register(p.add_subparsers()); "
            "assert 'lorascope.cli' not in sys.modules, 'lorascope.k8s.cli imported lorascope.cli'")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_cluster_subcommand_usage_errors_exit_2(capsys):
    """The cluster subparsers are of the main Parser class (taken from their parent, not imported): exit 2."""
    assert cli.main(["cluster", "run", "--study", str(SMOKE), "--overlay", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_validate_without_torch_checks_the_file_and_says_what_it_skipped(tmp_path):
    """`validate` builds the model on the meta device for its LoRA target_modules check (torch + transformers); where
    torch is not installed it still checks the file, and says that the model checks were skipped."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in {'torch', 'transformers', 'peft'}:\n"
            "            raise ImportError(name + ' is not installed here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import importlib.util\n"
            "importlib.util.find_spec = (lambda f: lambda n, *a: None if n == 'torch' else f(n, *a))(importlib.util.find_spec)\n"
            "from lorascope.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    ok = subprocess.run([sys.executable, "-c", code, "validate", str(SMOKE)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "ok  study=smoke" in ok.stdout and "model checks skipped (torch is not installed here)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("seeds:", "seedz:", 1))
    r = subprocess.run([sys.executable, "-c", code, "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "seed" in r.stderr, r.stderr[-2000:]
