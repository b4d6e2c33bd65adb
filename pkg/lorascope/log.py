"""Grep-able log lines on the standard library: `ts=12:00:01 level=info phase=train cell=mrpc-lora-s42 step=120 msg=train`.

The call API is small and unchanged: `log(event, **fields)`, `Logger(**context)` with `.bind(**more)`, levels as
`log.debug/info/warning/error(...)` or a `level=` keyword, and `progress(...)` for long loops. Underneath it is
`logging`: records go to the `lorascope` logger, and one handler on the root logger writes
every record, lorascope's own and the libraries' (transformers, vLLM, Python warnings), as one logfmt line on stderr.

`configure_logging(level)` is the one place that sets it up; the CLI calls it with `-v` / `-q` / `--log-level`
(env LORASCOPE_LOG_LEVEL). Code that logs before anyone configured (tests, a notebook) gets the default: info.

logfmt here: `key=value` pairs separated by spaces; a value with a space, `=`, `"`, a backslash or a control
character, or an empty one, is double-quoted with `\\`, `\"`, `\n`, `\r`, `\t` escaped, so every record is one line
and `parse_logfmt` gives the fields back exactly.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = "lorascope"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
DEFAULT_LEVEL = "info"
ENV_LEVEL = "LORASCOPE_LOG_LEVEL"
# Libraries log at WARNING and above (their INFO is chatter in a phase log); a quieter lorascope level applies to
# them too.
LIBRARY_FLOOR = logging.WARNING

_FIELDS = "lorascope_fields"  # the LogRecord attribute that carries a lorascope record's key=value fields
_lock = threading.Lock()
_handler: logging.Handler | None = None


# ------------------------------------------------------------------------------------------------ logfmt
_BARE = re.compile(r'[^\s="\\\x00-\x1f\x7f]+')
_KEY = re.compile(r"[A-Za-z0-9_.\-]+=")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def format_value(value: Any) -> str:
    """One logfmt value: floats with 6 significant digits; bare when it is a plain token, else quoted and escaped."""
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    if _BARE.fullmatch(text):
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_key(key: str) -> str:
    """A key is a bare token: characters other than letters, digits, `_`, `.` and `-` become `_`."""
    return _KEY_BAD.sub("_", str(key)) or "_"


def format_line(fields: Mapping[str, Any]) -> str:
    """`k=v k2="v 2"`; fields whose value is None are left out."""
    return " ".join(f"{format_key(k)}={format_value(v)}" for k, v in fields.items() if v is not None)


_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of one line that `format_line` wrote (values as strings). ValueError on anything that is not
    logfmt, naming the position, so a test can assert that every line of a log parses."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        m = _KEY.match(line, i)
        if not m:
            raise ValueError(f"not logfmt at column {i}: {line[i : i + 40]!r}")
        key = m.group()[:-1]
        i = m.end()
        if i < n and line[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted value for {key!r}")
                ch = line[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    nxt = line[i + 1 : i + 2]
                    if nxt in _UNESCAPES:
                        chars.append(_UNESCAPES[nxt])
                        i += 2
                    elif nxt == "x" and re.fullmatch(r"[0-9a-f]{2}", line[i + 2 : i + 4]):
                        chars.append(chr(int(line[i + 2 : i + 4], 16)))
                        i += 4
                    else:
                        raise ValueError(f"bad escape at column {i} in value of {key!r}")
                    continue
                chars.append(ch)
                i += 1
            value = "".join(chars)
            if i < n and line[i] != " ":
                raise ValueError(f"no space after the quoted value of {key!r} at column {i}")
        else:
            m = _BARE.match(line, i)
            value = m.group() if m else ""
            i = m.end() if m else i
            if i < n and line[i] != " ":
                raise ValueError(f"bad character {line[i]!r} in the value of {key!r} at column {i}")
        out[key] = value
    return out


class LogfmtFormatter(logging.Formatter):
    """`ts=HH:MM:SS level=info [logger=<library>] <fields> msg=<event>`; one line per record whatever it holds."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%H:%M:%S", time.localtime(record.created)),
            "level": record.levelname.lower(),
        }
        if record.name != ROOT and not record.name.startswith(ROOT + "."):
            fields["logger"] = record.name
        fields.update(getattr(record, _FIELDS, None) or {})
        msg = record.getMessage()
        fields["msg"] = msg if hasattr(record, _FIELDS) else msg.strip()  # a library's message may end in newlines
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return format_line(fields)


class _LibraryRecords(logging.Filter):
    """On the root handler, for records of other libraries only: drops the messages lorascope declared expected
    (`expect`) and repeats of an identical message (same logger, level and text: shown once per process)."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: list[tuple[str, re.Pattern[str]]] = []
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ROOT or record.name.startswith(ROOT + "."):
            return True
        msg = record.getMessage()
        for prefix, pattern in self.rules:
            if (record.name == prefix or record.name.startswith(prefix + ".")) and pattern.search(msg):
                return False
        key = (record.name, record.levelno, msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_library_records = _LibraryRecords()


def expect(logger: str, *patterns: str) -> None:
    """Declare messages of `logger` (and its children) that lorascope knows to be expected, so they are not shown:
    each pattern a regex searched in the message. Keep them exact; anything else from that library still shows."""
    for p in patterns:
        rule = (logger, re.compile(p))
        if rule not in _library_records.rules:
            _library_records.rules.append(rule)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (pytest's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        bar = _bars[-1] if _bars else None
        if bar is None:
            super().emit(record)
            return
        try:  # a line while a progress bar is drawn: above the bar, which is redrawn below it
            bar.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


_bars: list[Any] = []  # the progress bars being drawn now (a terminal only)


# ------------------------------------------------------------------------------------------------ configuration
def level_from(verbose: int = 0, quiet: int = 0, level: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The level the CLI asks for: --log-level, else -v (debug) / -q (warning, -qq error), else LORASCOPE_LOG_LEVEL,
    else info. ValueError naming the value when it is not one of debug, info, warning, error."""
    if level:
        name = level.strip().lower()
    elif verbose:
        name = "debug"
    elif quiet:
        name = "warning" if quiet == 1 else "error"
    else:
        name = ((env or {}).get(ENV_LEVEL) or DEFAULT_LEVEL).strip().lower()
    if name not in LEVELS:
        raise ValueError(f"log level {name!r} (--log-level / {ENV_LEVEL}): expected one of {', '.join(LEVELS)}")
    return name


def configure_logging(
    level: str = DEFAULT_LEVEL, *, environ: MutableMapping[str, str] | None = None, tty: bool | None = None
) -> None:
    """The one configuration point: every record as logfmt on stderr, lorascope's at `level`, the libraries' at
    WARNING (or `level` if quieter), Python warnings captured (each shown once, level=warning).

    `environ` (the CLI passes os.environ): when stderr is not a terminal, the libraries' own progress bars are
    turned off through their documented variables, before they are imported (HF_HUB_DISABLE_PROGRESS_BARS covers
    huggingface_hub and transformers, HF_DATASETS_DISABLE_PROGRESS_BARS datasets), and vLLM is told not to install
    its own log handler (VLLM_CONFIGURE_LOGGING=0) so its warnings arrive here as logfmt lines. A variable the user
    set is left as it is; children (`lorascope run --jobs N`, the bench's vLLM interpreter) inherit them."""
    global _handler
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    lvl = LEVELS[level]
    with _lock:
        root = logging.getLogger()
        if _handler is not None:
            root.removeHandler(_handler)
        _handler = _StderrHandler()
        _handler.setFormatter(LogfmtFormatter())
        _handler.addFilter(_library_records)
        root.addHandler(_handler)
        root.setLevel(max(lvl, LIBRARY_FLOOR))
        ours = logging.getLogger(ROOT)
        ours.setLevel(lvl)
        ours.propagate = True
    capture_warnings()
    if environ is not None:
        interactive = sys.stderr.isatty() if tty is None else tty
        if not interactive:
            environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


def _ensure_configured() -> None:
    if _handler is None:
        configure_logging(DEFAULT_LEVEL)


def route_transformers_logs() -> None:
    """transformers writes through its own stderr handler with propagation off; give its records to the root
    handler instead (logfmt, `logger=transformers...`). Called when a phase starts; a no-op without transformers."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()  # its level stays transformers' own (WARNING, or TRANSFORMERS_VERBOSITY)


_seen_warnings: set[tuple[str, str, str, int]] = set()


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """`warnings.showwarning`: one logfmt line per distinct warning (category, text, place), level=warning."""
    text = str(message)
    key = (category.__name__, text, str(filename), int(lineno or 0))
    if key in _seen_warnings:
        return
    _seen_warnings.add(key)
    lg = logging.getLogger("py.warnings")
    if not lg.isEnabledFor(logging.WARNING):  # -qq
        return
    record = lg.makeRecord(
        "py.warnings", logging.WARNING, str(filename), int(lineno or 0), "%s", (text,), None
    )
    setattr(record, _FIELDS, {"category": category.__name__, "where": f"{filename}:{lineno}"})
    lg.handle(record)


def capture_warnings() -> None:
    """Python warnings into the log (like logging.captureWarnings, but as fields: category, where, msg)."""
    warnings.showwarning = _showwarning


# ------------------------------------------------------------------------------------------------ the call API
class Logger:
    """A `log` with fixed context fields, e.g. Logger(phase="train", cell="mrpc-lora-s42"); records go to the
    `lorascope` logger."""

    name = ROOT

    def __init__(self, **context: Any) -> None:
        self.context = context

    def bind(self, **more: Any) -> Logger:
        return Logger(**{**self.context, **more})

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        _ensure_configured()
        lg = logging.getLogger(self.name)
        levelno = LEVELS.get(level)
        if levelno is None:
            raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
        if not lg.isEnabledFor(levelno):
            return
        record = lg.makeRecord(lg.name, levelno, "(lorascope)", 0, "%s", (event,), None)
        setattr(record, _FIELDS, {**self.context, **fields})
        lg.handle(record)

    def debug(self, event: str, **fields: Any) -> None:
        self(event, level="debug", **fields)

    def info(self, event: str, **fields: Any) -> None:
        self(event, level="info", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self(event, level="warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self(event, level="error", **fields)

    def enabled(self, level: str) -> bool:
        _ensure_configured()
        return logging.getLogger(self.name).isEnabledFor(LEVELS[level])


log = Logger()  # `from lorascope.log import log; log("event", key=value)`, `log.warning(...)`


# ------------------------------------------------------------------------------------------------ long loops
def progress(
    items: Iterable[T], total: int | None, desc: str, logger: Logger, every: int = 10, tty: bool | None = None
) -> Iterator[T]:
    """Yield items; on a terminal a tqdm bar, otherwise (a pod, a file) `desc done=i total=n seconds=s` every `every`
    items; always one closing `<desc> done` line."""
    interactive = sys.stderr.isatty() if tty is None else tty
    bar = None
    if interactive and logger.enabled("info"):
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
            _bars.append(bar)
        except ImportError:  # tqdm comes with the HF stack; without it, the plain lines
            bar = None
    start = time.perf_counter()
    i = 0
    try:
        for i, item in enumerate(items, 1):
            yield item
            if bar is not None:
                bar.update(1)
            elif every and i % every == 0 and i != total:
                logger(desc, done=i, total=total, seconds=round(time.perf_counter() - start, 1))
    finally:
        if bar is not None:
            bar.close()
            _bars.remove(bar)
    logger(desc + " done", done=i, total=total, seconds=round(time.perf_counter() - start, 1))
