"""Hardened reading and writing: every file servesim reads or writes goes through here.

Inputs are data from anyone. Each reader in the project (scenarios, sweep and plan files,
price tables, GPU YAML, ``config.json``, every trace format) uses these functions, so one
set of limits and one style of message holds everywhere:

* **Files**: a path must name a regular file (a directory, FIFO or device is refused before
  it is opened), no larger than a per-kind limit (:data:`MAX_CONFIG_BYTES`,
  :data:`MAX_TRACE_BYTES`), UTF-8 text without NUL bytes (the message gives the line and
  column of the first bad byte).
* **YAML** (:func:`load_yaml`): safe types only, duplicate keys refused (a merge key
  ``<<:`` may still be overridden), mapping keys must be scalars, nesting at most
  :data:`MAX_DEPTH` deep, alias expansion at most :data:`MAX_NODES` nodes (an alias bomb is
  refused before it is built), no recursive aliases, no ``.inf`` / ``.nan``, integers
  within int64.
* **JSON** (:func:`load_json`): the same limits; ``NaN`` / ``Infinity`` refused.
* **Messages** echo values through :func:`short`, never whole (a 10 MB value prints as its
  first 60 characters).
* **Outputs**: a name that becomes a path is one safe component (:func:`safe_component`);
  files are written inside the output directory, atomically, never through a symlink, with
  the user's normal permissions (:func:`write_bytes_in`, :func:`prepare_out_dir`).

Every limit is documented in ``docs/inputs.md``. Errors are :class:`ConfigError` (or the
``error`` class a caller passes), i.e. exit status 2 with one message and no traceback.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from servesim.hwmodels.errors import ConfigError, SimulatorError

__all__ = [
    "INT64_MAX",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_TRACE_BYTES",
    "check_finite",
    "check_int",
    "check_regular_file",
    "clip",
    "load_json",
    "load_yaml",
    "prepare_out_dir",
    "read_text",
    "safe_component",
    "scan_text_file",
    "short",
    "user_cache_dir",
    "write_bytes_in",
    "write_text_in",
]

MiB = 1 << 20
GiB = 1 << 30

# Scenario, sweep, plan, price, GPU and config.json files: hand-written, kilobytes. 16 MiB
# leaves room for generated sweeps with thousands of explicit points.
MAX_CONFIG_BYTES = 16 * MiB
# Traces: the Azure 2024 week is ~1.4 GiB of CSV; leave headroom.
MAX_TRACE_BYTES = 8 * GiB
# Nesting of YAML/JSON collections (scenarios need < 10).
MAX_DEPTH = 64
# Nodes after alias expansion (a 10,000-point sweep with 20 keys each is 400,000).
MAX_NODES = 2_000_000
INT64_MAX = (1 << 63) - 1

ErrorType = type[SimulatorError]


def short(value: Any, limit: int = 60) -> str:
    """``repr``-like text of ``value``, cut to ``limit`` characters (with its full length)."""
    try:
        text = value if isinstance(value, str) else repr(value)
        if isinstance(value, str):
            text = repr(value[: limit + 1])
    except Exception:  # a hostile __repr__ never reaches here (inputs are data), but be safe
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes | list | dict) else len(text)
    return f"{text[: limit - 3]}... ({size} characters)"


def clip(text: str, limit: int = 400) -> str:
    """A message line cut to ``limit`` characters (for messages that embed a value)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


# ---------------------------------------------------------------------------- files


def check_regular_file(path: str | Path, what: str, *, max_bytes: int,
                       error: ErrorType = ConfigError) -> int:
    """Refuse anything but an existing regular file of at most ``max_bytes``.

    Returns:
        The file's size in bytes.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {short(str(path), 200)} does not exist") from None
    except (OSError, ValueError) as exc:
        raise error(f"{what} {short(str(path), 200)} cannot be read: {_os_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {short(str(path), 200)} is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"{what} {short(str(path), 200)} is not a regular file (a FIFO, socket or device); "
            "give a file"
        )
    if st.st_size > max_bytes:
        raise error(
            f"{what} {path} is {st.st_size / MiB:.1f} MiB; the limit for this kind of file is "
            f"{max_bytes / MiB:.0f} MiB (see docs/inputs.md)"
        )
    return st.st_size


def read_text(path: str | Path, what: str, *, max_bytes: int = MAX_CONFIG_BYTES,
              error: ErrorType = ConfigError) -> str:
    """Read a small text file: regular, at most ``max_bytes``, UTF-8, no NUL bytes.

    A leading byte-order mark is dropped. Errors name the file, line and column.
    """
    path = Path(path)
    check_regular_file(path, what, max_bytes=max_bytes, error=error)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {_os_reason(exc)}") from None
    if len(data) > max_bytes:  # grew after stat
        raise error(f"{what} {path} is larger than the limit of {max_bytes / MiB:.0f} MiB")
    return _decode(data, path, what, error)


def _decode(data: bytes, path: Path, what: str, error: ErrorType) -> str:
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise error(
            f"{path}: line {line}, column {col}: {what} is not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x}); is it a binary file?"
        ) from None
    if nul >= 0:
        line, col = _line_col(data, nul)
        raise error(f"{path}: line {line}, column {col}: {what} contains a NUL byte; "
                    "is it a binary file?")
    return text.removeprefix("\ufeff")


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def scan_text_file(path: str | Path, what: str, *, max_bytes: int = MAX_TRACE_BYTES,
                   error: ErrorType = ConfigError, chunk_bytes: int = 4 * MiB) -> None:
    """Check a (possibly large) text file in chunks: regular, size, UTF-8, no NUL bytes.

    Used before handing a trace to a CSV parser, so that a binary or mis-encoded file is one
    message with its line and column rather than a parser's exception.
    """
    path = Path(path)
    check_regular_file(path, what, max_bytes=max_bytes, error=error)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lines_before = 0
    try:
        with path.open("rb") as f:
            while True:
                chunk = f.read(chunk_bytes)
                final = not chunk
                try:
                    decoder.decode(chunk, final=final)
                except UnicodeDecodeError as exc:
                    # exc.start counts from the undecoded tail carried over (<= 3 bytes).
                    pending = len(exc.object) - len(chunk)
                    at = max(exc.start - pending, 0)
                    line, col = _line_col(chunk, at)
                    col_txt = f", column {col}" if line > 1 or lines_before == 0 else ""
                    raise error(
                        f"{path}: line {lines_before + line}{col_txt}: {what} is not UTF-8 "
                        "text; is it a binary file?"
                    ) from None
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    line, col = _line_col(chunk, nul)
                    raise error(f"{path}: line {lines_before + line}: {what} contains a NUL "
                                "byte; is it a binary file?")
                if final:
                    return
                lines_before += chunk.count(b"\n")
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {_os_reason(exc)}") from None


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


# ---------------------------------------------------------------------------- YAML


class _Limits(Exception):
    """Raised inside the loader; turned into the caller's error with the mark."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _HardenedLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key, depth, alias-expansion and number checks."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # the composer recurses here
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limits(
                    f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return self.construct_document(node)


def _check_graph(root: yaml.Node) -> None:
    """Refuse recursive aliases and documents that expand past :data:`MAX_NODES` nodes.

    Sizes are memoised per node, so the check is linear in the *unexpanded* document.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_NODES:
                raise _Limits(
                    f"the document expands to more than {MAX_NODES:,} values (aliases that "
                    "repeat aliases: a YAML 'billion laughs'); write the values out",
                    node.start_mark,
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise _Limits("a recursive alias (a value that contains itself)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _Limits("a recursive alias (a value that contains itself)",
                              child.start_mark)
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield k
            yield v


def _construct_mapping(loader: _HardenedLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Limits("a mapping key must be a plain value, not a list or mapping "
                          "('? [a, b]' keys are not supported)", key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise _Limits(f"duplicate key {short(key)}", key_node.start_mark)
        seen.add(key)
    # Explicit keys win over merged ('<<:') ones: flatten puts merged pairs first.
    loader.flatten_mapping(node)
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Limits("a mapping key must be a plain value", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


def _construct_float(loader: _HardenedLoader, node: yaml.ScalarNode) -> float:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise _Limits(
            f"{short(node.value)} is not a finite number (.inf, .nan and values beyond "
            "1.8e308 are refused); give a finite number", node.start_mark)
    return value


def _construct_int(loader: _HardenedLoader, node: yaml.ScalarNode) -> int:
    digits = node.value.replace("_", "").lstrip("+-")
    if len(digits) > 40:  # int("9" * 10**6) is quadratic; no field needs 40 digits
        raise _Limits(f"integer {short(node.value)} is too long", node.start_mark)
    value = loader.construct_yaml_int(node)
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise _Limits(f"integer {short(node.value)} is outside the 64-bit range "
                      f"(|n| < 2^63)", node.start_mark)
    return value


_HardenedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                _construct_mapping)
_HardenedLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_HardenedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(text: str, source: str, *, error: ErrorType = ConfigError) -> Any:
    """Parse YAML text with the limits of this module.

    Args:
        text: the document (one document; ``---`` separated streams are refused).
        source: the file name for messages.
        error: exception class raised.

    Raises:
        error: syntax errors and limit violations, with line and column.
    """
    loader = None
    try:
        loader = _HardenedLoader(text)  # the reader refuses control characters here
        return loader.get_single_data()
    except _Limits as exc:
        raise error(f"{source}: {_where(exc.mark)}{exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise error(f"{source}: YAML syntax error at {_where(mark)}{clip(problem, 200)}"
                    f"{clip(context, 200)}") from None
    except yaml.reader.ReaderError as exc:
        line, col = _text_line_col(text, exc.position)
        raise error(f"{source}: line {line}, column {col}: character 0x{exc.character:02x} is not "
                    "allowed in YAML (a control character; is it a binary file?)") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: YAML syntax error: {clip(str(exc), 300)}") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply (limit {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _text_line_col(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _where(mark: Any) -> str:
    if mark is None:
        return ""
    return f"line {mark.line + 1}, column {mark.column + 1}: "


# ---------------------------------------------------------------------------- JSON


def _json_constant(name: str) -> float:
    raise _Limits(f"{name} is not a finite number; give a finite number")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Limits(f"{short(text)} is not a finite number (beyond 1.8e308)")
    return value


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 40:
        raise _Limits(f"integer {short(text)} is too long")
    value = int(text)
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise _Limits(f"integer {short(text)} is outside the 64-bit range (|n| < 2^63)")
    return value


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Limits(f"duplicate key {short(key)}")
        out[key] = value
    return out


def load_json(text: str, source: str, *, error: ErrorType = ConfigError,
              line_offset: int = 0) -> Any:
    """Parse JSON text: finite numbers only, int64 integers, bounded nesting, no duplicate
    keys.

    Args:
        text: the JSON document.
        source: file name for messages.
        error: exception class raised.
        line_offset: added to line numbers (a JSONL record on a later line).
    """
    depth = _json_depth(text)
    if depth > MAX_DEPTH:
        raise error(f"{source}: nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_json_constant, parse_float=_json_float,
                          parse_int=_json_int, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: line {exc.lineno + line_offset}, column {exc.colno}: invalid "
                    f"JSON: {exc.msg}") from None
    except _Limits as exc:
        raise error(f"{source}: {'line ' + str(line_offset) + ': ' if line_offset else ''}"
                    f"{exc}") from None
    except (RecursionError, ValueError) as exc:
        raise error(f"{source}: invalid JSON: {short(str(exc), 200)}") from None


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a cheap pre-check before json.loads)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = best = 0
    for m in _BRACKETS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            best = max(best, depth)
        elif c in "]}":
            depth -= 1
    return best


# ---------------------------------------------------------------------------- values


def check_finite(value: Any, where: str, *, error: ErrorType = ConfigError) -> float:
    """``value`` as a float, refusing bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where}: expected a number, got {short(value)}")
    if not math.isfinite(value):
        raise error(f"{where}: expected a finite number, got {short(value)}")
    return float(value)


def check_int(value: Any, where: str, *, lo: int = 0, hi: int = INT64_MAX,
              error: ErrorType = ConfigError) -> int:
    """``value`` as an int in ``[lo, hi]`` (an integral float such as ``4.0`` is accepted)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: expected an integer, got {short(value)}")
    if not lo <= value <= hi:
        raise error(f"{where}: {short(value)} is outside the valid range [{lo}, {hi}]")
    return value


# ---------------------------------------------------------------------------- outputs


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/servesim/<parts>`` (``~/.cache`` when unset or not absolute, as the
    XDG Base Directory specification says)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root.joinpath("servesim", *parts)

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def safe_component(name: Any, what: str, *, error: ErrorType = ConfigError) -> str:
    """``name`` if it is one safe path component, else an error naming what is allowed.

    Allowed: 1-128 characters, letters, digits and ``. _ + -``, starting with a letter or
    digit, and no ``..``: never a separator, an absolute path, a control character or a
    parent directory.
    """
    if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or ".." in name:
        raise error(
            f"{what} {short(name)} is not a safe name: it names a directory, so it must be "
            "1-128 letters, digits, '.', '_', '+' or '-', start with a letter or digit and "
            "not contain '..'"
        )
    return name


def prepare_out_dir(out: str | Path, *, error: ErrorType = ConfigError) -> Path:
    """Create the output directory (and parents) and return its resolved path.

    Raises:
        error: ``out`` exists and is not a directory, or it cannot be created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"output directory {short(str(out), 200)} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise error(f"output directory {short(str(out), 200)}: a parent is a file") from None
    except OSError as exc:
        raise error(f"cannot create output directory {short(str(out), 200)}: "
                    f"{_os_reason(exc)}") from None
    return out.resolve()


def _inside(root: Path, relpath: str | Path, error: ErrorType) -> Path:
    """``root / relpath`` after checking each part is a safe component and no existing
    directory on the way is a symlink; parents are created."""
    root = Path(root).resolve()
    parts = Path(relpath).parts
    if not parts:
        raise error("empty output file name")
    here = root
    for i, part in enumerate(parts):
        safe_component(part, "output path component", error=error)
        here = here / part
        last = i == len(parts) - 1
        if here.is_symlink():
            if last:
                break  # os.replace swaps the link itself; the target is never written
            raise error(f"{here} is a symbolic link; servesim writes only inside the output "
                        "directory, never through a link")
        if not last:
            if here.exists() and not here.is_dir():
                raise error(f"{here} exists and is not a directory")
            here.mkdir(exist_ok=True)
    return here


def write_bytes_in(root: str | Path, relpath: str | Path, data: bytes | Callable[[Path], None],
                   *, error: ErrorType = ConfigError) -> Path:
    """Write a file inside ``root`` atomically (temporary file + :func:`os.replace`).

    Args:
        root: the output directory (created by :func:`prepare_out_dir`).
        relpath: path below ``root``; each part must be a safe component.
        data: the bytes, or a function that writes the file at the path it is given.
        error: exception class raised.

    Returns:
        The file's path. A crash leaves the old file or the new one, never a torn one;
        the file gets the user's normal permissions (umask), unlike ``mkstemp``'s 0600.
    """
    target = _inside(Path(root), relpath, error)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
        try:
            if callable(data):
                os.close(fd)
                fd = -1
                data(tmp)
            else:
                with os.fdopen(fd, "wb") as f:
                    fd = -1
                    f.write(data)
        finally:
            if fd >= 0:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_text_in(root: str | Path, relpath: str | Path, text: str, *,
                  error: ErrorType = ConfigError) -> Path:
    """:func:`write_bytes_in` for UTF-8 text."""
    return write_bytes_in(root, relpath, text.encode("utf-8"), error=error)
