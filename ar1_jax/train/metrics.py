"""Training logs without extra dependencies: a JSONL metrics file, TensorBoard scalars, a progress bar.

`MetricsLog(workdir)` appends one JSON object per logged step to `workdir/metrics.jsonl` and mirrors
the numeric values to TensorBoard event files under `workdir/tensorboard/`. A resumed run
(`resume_step`) first drops what the interrupted run logged after its last checkpoint. Only the
lead process logs: pass `enabled=(jax.process_index() == 0)`.

`TensorBoardWriter` writes the event file format by hand: TFRecord framing
(`uint64 length | masked crc32c(length) | data | masked crc32c(data)`, little-endian) of `Event`
protocol buffers, encoded by the few lines of protobuf wire format below:
    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
              SessionLog session_log = 7; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { Status status = 1; }       (START = 1)

`Progress(total)` is a one-line bar (rate, elapsed, ETA, postfix) on a terminal, and a plain line
every ~5% or 30 s otherwise (log files).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import struct
import sys
import tempfile
import time

import numpy as np

# ----------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), table-driven, reflected polynomial 0x82F63B78.


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (`crc32c(b"123456789") == 0xE3069283`)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ----------------------------------------------------------------------------------------------------
# Protobuf wire format (just what Event needs).


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, ten bytes
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _pb_varint(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _pb_double(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _pb_float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _pb_bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    msg = _pb_double(1, wall_time) + (_pb_varint(2, step) if step else b"")
    if file_version is not None:
        msg += _pb_bytes(3, file_version)
    if scalars:
        values = b"".join(_pb_bytes(1, _pb_bytes(1, tag) + _pb_float(2, v)) for tag, v in scalars.items())
        msg += _pb_bytes(5, values)
    if session_start:
        msg += _pb_bytes(7, _pb_varint(1, 1))
    return msg


def _number(value) -> float | int | None:
    """A Python int or float for a numeric scalar (Python, numpy or a 1-element array), else None."""
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything that is not array-like is not a number
        return None
    if arr.size != 1 or arr.dtype.kind not in "iuf":
        return None
    return arr.reshape(()).item()


# ----------------------------------------------------------------------------------------------------
# Writers.


class TensorBoardWriter:
    """Scalars into `logdir/events.out.tfevents.<unix time>.<host>` (a new file per writer)."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        base = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        path, n = self.logdir / base, 0
        while path.exists():  # two writers in one second
            n += 1
            path = self.logdir / f"{base}.{n}"
        self.path = path
        self._file = open(path, "wb")
        self._write(_event(time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"TensorBoardWriter({self.logdir}) is closed")
        self._file.write(tfrecord(event))

    def scalars(self, step: int, values: dict) -> None:
        """One event at `step` with every numeric value (bools, strings, None and arrays skipped)."""
        numeric = {str(k): float(x) for k, v in values.items() if (x := _number(v)) is not None}
        if numeric:
            self._write(_event(time.time(), int(step), scalars=numeric))

    def session_start(self, step: int) -> None:
        """A SessionLog START at `step`: TensorBoard discards earlier-written points at >= `step`
        (what a resumed run uses to replace the interrupted run's tail)."""
        self._write(_event(time.time(), int(step), session_start=True))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Rewrites `path` keeping the lines with `step <= last_step` (and dropping unreadable ones)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
        if step <= last_step:
            kept.append(line + "\n")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


class MetricsLog:
    """`workdir/metrics.jsonl` (one `{"step": ..., **metrics}` object per write, full precision;
    NaN/inf written as null and named in `"nonfinite"`) plus TensorBoard scalars under
    `workdir/tensorboard/`. Flushed after every write. `enabled=False`: no files, every method a no-op.
    `resume_step`: drop logged lines with `step > resume_step` first (atomically) and mark the restart
    for TensorBoard."""

    FILENAME = "metrics.jsonl"

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / self.FILENAME
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            _truncate_jsonl(self.path, resume_step)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._file = open(self.path, "a")
        if needs_newline:  # the previous run was killed mid-line
            self._file.write("\n")
        if tensorboard:
            self._tb = TensorBoardWriter(pathlib.Path(workdir) / "tensorboard")
            if resume_step is not None:
                self._tb.session_start(resume_step + 1)
                self._tb.flush()

    def write(self, step: int, metrics: dict) -> None:
        """Appends `metrics` at `step`. Numeric scalars become numbers; str, bool and None stay;
        anything else is written as its `str`."""
        if not self.enabled:
            return
        record, nonfinite = {"step": int(step)}, []
        for key, value in metrics.items():
            if key in ("step", "nonfinite"):
                raise ValueError(f"MetricsLog.write: metric name {key!r} is reserved")
            number = _number(value)
            if number is not None:
                if isinstance(number, float) and not math.isfinite(number):
                    nonfinite.append(key)
                    number = None
                record[key] = number
            elif value is None or isinstance(value, (str, bool)):
                record[key] = value
            elif isinstance(value, np.bool_):
                record[key] = bool(value)
            else:
                record[key] = str(value)
        if nonfinite:
            record["nonfinite"] = nonfinite
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.scalars(step, metrics)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------
# Progress.


def _hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _postfix(values: dict) -> str:
    parts = []
    for key, value in values.items():
        number = _number(value)
        if isinstance(number, float):
            parts.append(f"{key}={number:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class Progress:
    """Progress of a run from `initial` to `total` steps, on `stream` (stderr).

    `update(step, **postfix)` takes the absolute step. The rate (and so the ETA) is measured from the
    first update onward, so the first step's compile time does not skew it. On a terminal the line
    is redrawn in place (`\\r`) at most every `min_interval_s`; otherwise a plain line is printed at
    the first update, every ~5% of the run or 30 s, and at the end.
    """

    PLAIN_FRACTION = 0.05
    PLAIN_INTERVAL_S = 30.0
    BAR_WIDTH = 24

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train", stream=None,
                 enabled: bool = True, min_interval_s: float = 0.5, clock=time.monotonic):
        stream = sys.stderr if stream is None else stream  # the stderr of now, not of import time
        self.total, self.initial, self.desc = int(total), int(initial), desc
        self.stream, self.enabled, self.min_interval_s, self.clock = stream, enabled, min_interval_s, clock
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._start = clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._last_shown: tuple[int, float] | None = None
        self._latest: tuple[int, float, dict] | None = None
        self._width = 0
        self._closed = False

    def rate(self) -> float | None:
        """Steps per second since the first update (None before a second update)."""
        if self._first is None or self._latest is None:
            return None
        steps, dt = self._latest[0] - self._first[0], self._latest[1] - self._first[1]
        return steps / dt if steps > 0 and dt > 0 else None

    def line(self) -> str:
        """The current status line (without `\\r` or newline)."""
        step, now, postfix = self._latest if self._latest else (self.initial, self.clock(), {})
        frac = min(max(step / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        filled = int(frac * self.BAR_WIDTH)
        rate = self.rate()
        eta = (self.total - step) / rate if rate else None
        speed = "? step/s" if rate is None else f"{rate:.2f} step/s" if rate >= 1 else f"{1 / rate:.2f} s/step"
        text = (f"{self.desc} |{'#' * filled}{'-' * (self.BAR_WIDTH - filled)}| {step}/{self.total} "
                f"{100 * frac:3.0f}% {speed} elapsed {_hms(now - self._start)} eta {_hms(eta)}")
        extra = _postfix(postfix)
        return f"{text} {extra}" if extra else text

    def update(self, step: int, **postfix) -> None:
        if not self.enabled or self._closed:
            return
        now = self.clock()
        step = int(step)
        if self._first is None:
            self._first = (step, now)
        self._latest = (step, now, postfix)
        final = step >= self.total
        last_step, last_time = self._last_shown if self._last_shown else (None, None)
        if self.tty:
            show = final or last_time is None or now - last_time >= self.min_interval_s
        else:
            show = (final or last_step is None or now - last_time >= self.PLAIN_INTERVAL_S
                    or step - last_step >= max(1, self.PLAIN_FRACTION * self.total))
        if show:
            self._show()

    def _show(self) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_shown = (self._latest[0], self._latest[1])

    def close(self) -> None:
        """Shows the latest state if it was not shown yet; ends the terminal line."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._latest is not None and (self._last_shown is None or self._last_shown[0] != self._latest[0]):
            self._show()
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
