"""lorascope.log: logfmt that survives any value, levels, one configuration point, warnings and library records as
logfmt lines, expected noise dropped and the unexpected kept, progress bars on a terminal and plain lines elsewhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorascope import log as lslog
from lorascope.log import Logger, configure_logging, format_line, level_from, parse_logfmt, progress

REPO = Path(__file__).resolve().parents[1]
NASTY = {
    "quote": 'say "hi"',
    "backslash": "C:\\path\\to",
    "newline": "line one\nline two\r\n",
    "equals": "a=b c=d",
    "empty": "",
    "tab": "x\ty",
    "control": "bell\x07",
    "unicode": "drift ↓ 12 %",
    "trailing_backslash": "ends with \\",
    "just_quote": '"',
}


@pytest.fixture
def configured(capsys):
    """Logging configured at info, writing to the captured stderr; back to info afterwards."""
    configure_logging("info")
    capsys.readouterr()
    yield capsys
    configure_logging("info")


def test_nasty_values_stay_on_one_line_and_parse_back_exactly():
    line = format_line({"ts": "12:00:00", **NASTY, "msg": 'event with = and "quotes"'})
    assert "\n" not in line and "\r" not in line
    parsed = parse_logfmt(line)
    assert parsed == {"ts": "12:00:00", **NASTY, "msg": 'event with = and "quotes"'}


def test_plain_tokens_stay_bare_floats_are_short_and_none_is_left_out():
    assert format_line({"step": 120, "loss": 0.41234567891, "cell": "mrpc-lora-s42", "skip": None}) == (
        "step=120 loss=0.412346 cell=mrpc-lora-s42"
    )
    assert format_line({"bad key!": 1}) == "bad_key_=1"


@pytest.mark.parametrize("line", ['a="unterminated', "a=1 junk", 'a="x"y', "=1", 'a="bad \\q escape"'])
def test_parse_rejects_what_is_not_logfmt(line):
    with pytest.raises(ValueError):
        parse_logfmt(line)


def test_logger_records_carry_level_context_and_fields(configured):
    lg = Logger(run="r1").bind(phase="train", cell="mrpc-lora-s42")
    lg("fit", step=3, note=NASTY["newline"])
    lg.warning("careful", why=NASTY["quote"])
    lg("as kwarg", level="error")
    lg.debug("hidden at info")
    lines = configured.readouterr().err.splitlines()
    assert len(lines) == 3
    first, second, third = (parse_logfmt(x) for x in lines)
    assert first["level"] == "info" and first["run"] == "r1" and first["cell"] == "mrpc-lora-s42"
    assert first["msg"] == "fit" and first["step"] == "3" and first["note"] == NASTY["newline"]
    assert second["level"] == "warning" and second["why"] == NASTY["quote"]
    assert third["level"] == "error" and third["msg"] == "as kwarg"
    with pytest.raises(ValueError, match="log level 'loud'"):
        lg("x", level="loud")


def test_configure_sets_the_level_for_lorascope_and_libraries(configured):
    configure_logging("debug")
    Logger().debug("now shown")
    logging.getLogger("somelib").info("library chatter")  # libraries stay at WARNING
    logging.getLogger("somelib").warning("library warning")
    configure_logging("warning")
    Logger()("info is hidden")
    Logger().warning("warning shown")
    configure_logging("error")
    logging.getLogger("somelib").warning("hidden when quieter than warning")
    lines = [parse_logfmt(x) for x in configured.readouterr().err.splitlines()]
    assert [(x["level"], x["msg"], x.get("logger")) for x in lines] == [
        ("debug", "now shown", None),
        ("warning", "library warning", "somelib"),
        ("warning", "warning shown", None),
    ]
    with pytest.raises(ValueError):
        configure_logging("verbose")


def test_identical_library_messages_are_shown_once_and_expected_ones_never(configured):
    lslog.expect("testlib.noisy", r"^known harmless thing \d+$")
    for _ in range(3):
        logging.getLogger("testlib.noisy.sub").warning("known harmless thing 7")
        logging.getLogger("testlib.noisy.sub").warning("something new")
    logging.getLogger("testlib.noisy").warning("known harmless thing 7, but different")
    logging.getLogger("otherlib").warning("known harmless thing 7")  # the rule is for testlib.noisy only
    msgs = [parse_logfmt(x)["msg"] for x in configured.readouterr().err.splitlines()]
    assert msgs == ["something new", "known harmless thing 7, but different", "known harmless thing 7"]


def test_level_from_flags_and_environment():
    assert level_from() == "info"
    assert level_from(verbose=1) == "debug"
    assert level_from(quiet=1) == "warning" and level_from(quiet=2) == "error"
    assert level_from(verbose=1, level="ERROR") == "error"  # --log-level wins
    assert level_from(env={"LORASCOPE_LOG_LEVEL": "warning"}) == "warning"
    assert level_from(quiet=1, env={"LORASCOPE_LOG_LEVEL": "debug"}) == "warning"  # a flag wins over the env
    with pytest.raises(ValueError, match="LORASCOPE_LOG_LEVEL"):
        level_from(env={"LORASCOPE_LOG_LEVEL": "chatty"})


def test_progress_plain_lines_off_a_terminal(configured):
    lg = Logger(phase="drift")
    assert list(progress(range(10), 10, "modules", lg, every=4, tty=False)) == list(range(10))
    lines = [parse_logfmt(x) for x in configured.readouterr().err.splitlines()]
    assert [(x["msg"], x["done"]) for x in lines] == [("modules", "4"), ("modules", "8"), ("modules done", "10")]
    assert all(x["total"] == "10" and x["phase"] == "drift" for x in lines)


def test_progress_draws_a_tqdm_bar_on_a_terminal(configured):
    out = list(progress(iter(range(5)), 5, "modules", Logger(), every=1, tty=True))
    err = configured.readouterr().err
    assert out == list(range(5))
    assert "\rmodules:   0%|" in err and "0/5" in err  # tqdm's bar, drawn in place (and cleared: leave=False)
    last = parse_logfmt(err.replace("\r", "\n").strip().splitlines()[-1])
    assert last["msg"] == "modules done" and last["done"] == "5"  # and no per-item plain lines on a terminal
    assert "msg=modules " not in err


def test_progress_on_a_terminal_at_warning_level_draws_nothing(configured):
    configure_logging("warning")
    assert list(progress(range(3), 3, "modules", Logger(), tty=True)) == [0, 1, 2]
    assert configured.readouterr().err == ""


def test_configure_turns_library_bars_off_only_off_a_terminal_and_keeps_user_choices():
    env: dict[str, str] = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "0"}
    configure_logging("info", environ=env, tty=False)
    assert env == {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "0",
                   "VLLM_CONFIGURE_LOGGING": "0"}  # fmt: skip
    env = {}
    configure_logging("info", environ=env, tty=True)
    assert env == {"VLLM_CONFIGURE_LOGGING": "0"}


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "pkg"), "PYTHONWARNINGS": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)  # fmt: skip


def test_python_warnings_become_one_logfmt_line_each_and_repeat_once():
    r = _python(
        "import warnings\n"
        "from lorascope.log import configure_logging\n"
        "configure_logging('info')\n"
        "for _ in range(3):\n"
        "    warnings.warn('an unexpected thing\\nwith a second line', UserWarning)\n"
        "warnings.warn('another one', DeprecationWarning)\n"  # shown: raised in __main__
        "warnings.warn_explicit('shown', RuntimeWarning, 'x.py', 7)\n"
    )
    assert r.returncode == 0, r.stderr
    lines = [parse_logfmt(x) for x in r.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["category"], x["msg"]) for x in lines] == [
        ("warning", "py.warnings", "UserWarning", "an unexpected thing\nwith a second line"),
        ("warning", "py.warnings", "DeprecationWarning", "another one"),
        ("warning", "py.warnings", "RuntimeWarning", "shown"),
    ]
    assert lines[0]["where"] == "<string>:5" and lines[2]["where"] == "x.py:7"


def test_the_peft_transformers_skew_warning_is_dropped_and_an_unexpected_one_still_shows():
    """PEFT reads `is_gradient_checkpointing` (deprecated by transformers 5): the real warning, from the real
    property, is not shown once lorascope.models is imported; any other warning, transformers' included, is."""
    r = _python(
        "import warnings\n"
        "from lorascope.log import configure_logging, route_transformers_logs\n"
        "configure_logging('info')\n"
        "route_transformers_logs()\n"
        "import lorascope.models\n"
        "from transformers import LlamaConfig, LlamaForSequenceClassification\n"
        "m = LlamaForSequenceClassification(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,\n"
        "    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))\n"
        "assert m.is_gradient_checkpointing is False\n"
        "warnings.warn_explicit('`is_activation_checkpointing` is deprecated', FutureWarning, 'modeling_utils.py', 1,\n"
        "                       module='transformers.modeling_utils')\n"
        "from transformers.utils import logging as hf_logging\n"
        "hf_logging.get_logger('transformers.modeling_utils').warning('a real mismatch\\n| key | status |')\n"
    )
    assert r.returncode == 0, r.stderr
    assert "is_gradient_checkpointing" not in r.stderr
    lines = [parse_logfmt(x) for x in r.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
        ("warning", "py.warnings", "`is_activation_checkpointing` is deprecated"),
        ("warning", "transformers.modeling_utils", "a real mismatch\n| key | status |"),
    ]


def test_stage_and_sanity_off_a_terminal_print_only_logfmt_lines(tmp_path):
    """What `make demo` shows in a pod or a file, pinned on two phases of the smoke study (stage writes a model,
    sanity loads classifiers and trains LoRA and full): no load report, no carriage-return bars, no FutureWarning,
    every line logfmt, and every phase index's start and end with its duration."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "pkg"), "LORASCOPE_TORCH_THREADS": "1"}
    for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "LORASCOPE_LOG_LEVEL"):
        env.pop(k, None)  # the CLI must turn the bars off itself
    r = subprocess.run(
        [sys.executable, "-m", "lorascope.cli", "run", "--study", str(REPO / "jobs" / "smoke.yaml"), "--phases",
         "stage,sanity", "--store", str(tmp_path / "store"), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    assert "LOAD REPORT" not in err and "\r" not in err and "FutureWarning" not in err and "it/s]" not in err
    lines = [parse_logfmt(x) for x in err.splitlines()]  # raises on any line that is not logfmt
    assert all(x["level"] in ("info", "warning") and "ts" in x and "msg" in x for x in lines)
    # the smoke study: stage has 1 index, sanity one per task x method (3 x 2)
    starts = [(x["phase"], x["index"]) for x in lines if x["msg"] == "start"]
    dones = {(x["phase"], x["index"]): float(x["seconds"]) for x in lines if x["msg"] == "done"}
    assert starts == [("stage", "0")] + [("sanity", str(i)) for i in range(6)]
    assert set(dones) == set(starts) and all(s >= 0 for s in dones.values())
    assert len(lines) < 60, err  # the quietness itself: about 6 lines per sanity index
    # the same run again at -q: everything is committed, nothing to say
    q = subprocess.run(
        [sys.executable, "-m", "lorascope.cli", "-q", "run", "--study", str(REPO / "jobs" / "smoke.yaml"), "--phases",
         "stage,sanity", "--store", str(tmp_path / "store"), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert q.returncode == 0 and q.stderr == "", q.stderr


def test_a_line_logged_during_a_bar_is_written_above_it(configured):
    for i in progress(range(3), 3, "modules", Logger(), tty=True):
        if i == 1:
            Logger().warning("in the middle", item=i)
    err = configured.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("ts=")]
    assert [parse_logfmt(x)["msg"] for x in lines] == ["in the middle", "modules done"]
    at = err.index("ts=")
    assert err[at - 1] in "\r\n" and "modules:" in err[:at]  # the bar was cleared first, not written over


def test_at_error_level_python_warnings_are_not_shown():
    r = _python(
        "import warnings\n"
        "from lorascope.log import configure_logging, log\n"
        "configure_logging('error')\n"
        "warnings.warn('a warning', UserWarning)\n"
        "log.error('an error')\n"
    )
    assert r.returncode == 0 and [parse_logfmt(x)["msg"] for x in r.stderr.splitlines()] == ["an error"], r.stderr
