"""``report.html``: the build report as one self-contained page to read and listen to.

The page shows what ``report.json`` holds — the summary per target, latency, size, memory and
quality charts, quality per input-SNR bucket, the quality gates, a timeline of the passes, the
profile's bottlenecks, precision, streaming and GPU details — and, for one clip, the
log-magnitude spectrograms of the noisy input, the fp32 PyTorch output and every target's
artifact output, each with a player.

It needs nothing outside itself: the CSS is inline, the charts are SVG drawn here, the
spectrograms are PNGs encoded here (numpy, ``zlib`` and ``struct``: no plotting library) and the
audio is 16-bit PCM WAV, both as ``data:`` URIs. It has no script. Every text taken from the
report is escaped; numbers are formatted as in ``report.md`` and one that is missing or NaN
shows as ``—``. Sections whose keys are missing or ``None`` are left out (the quality gates say
that none were checked), and the precision, streaming, GPU and profile sections read their keys
tolerantly, listing every field they hold in a collapsed table as well.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

CLIP_SECONDS = 4.0  # the page plays and shows at most this much of the clip
N_FFT = 512
HOP = 128
DYNAMIC_RANGE_DB = 80.0
MISSING = "—"

# viridis (perceptually uniform, readable in grey and by most colour-blind readers) at nine
# evenly spaced points, interpolated linearly into a 256-entry table
_VIRIDIS_ANCHORS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37)], dtype=np.float64)
_LEVELS = np.linspace(0.0, 1.0, 256)
VIRIDIS = np.stack([np.interp(_LEVELS, np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS)),
                              _VIRIDIS_ANCHORS[:, c]) for c in range(3)], axis=1
                   ).round().astype(np.uint8)

_SERIES = {  # series key -> (legend label, colour)
    "noisy": ("noisy input", "#a3abb5"),
    "baseline": ("fp32 PyTorch", "#e07b39"),
    "artifact": ("artifact", "#2f6db5"),
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, eq=False)  # arrays: compared and hashed by identity
class ReportClip:
    """One clip for the listening section: 1-D waveforms at ``sample_rate`` of the noisy input,
    the fp32 PyTorch model's output (``reference``) and each target's artifact output (target
    name -> waveform). The page shows at most the first :data:`CLIP_SECONDS` of each."""

    name: str
    sample_rate: int
    noisy: np.ndarray
    reference: np.ndarray
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if isinstance(rate, bool) or not (isinstance(rate, (int, np.integer)) and rate > 0):
            raise ValueError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")
        for label, wav in self.signals():
            if not isinstance(wav, np.ndarray) or wav.ndim != 1 or wav.size == 0:
                shape = getattr(wav, "shape", type(wav).__name__)
                raise ValueError(f"clip {label!r} must be a non-empty 1-D array, got {shape}")

    def signals(self) -> list[tuple[str, np.ndarray]]:
        """``(label, waveform)``: the noisy input, the fp32 PyTorch output, then each artifact's
        output."""
        return ([("noisy input", self.noisy), ("fp32 PyTorch", self.reference)]
                + [(f"{target} artifact", wav) for target, wav in self.artifacts.items()])


# --- formatting ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escaped text (for element content and quoted attributes)."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    """A number as ``report.md`` writes it (``spec``; by default an integer in full and a float
    to three significant digits), escaped; ``—`` for a missing or NaN value; any other value as
    its escaped text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if not spec:
        spec = "d" if isinstance(value, int) else ".3g"
    return _e(f"{value:{spec}}{suffix}")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or ``None`` where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1,
           cls: str = "") -> str:
    """A table of already-escaped cells; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Dotted ``(key, scalar)`` pairs of nested dicts and lists, for the all-fields tables."""
    if isinstance(value, dict) and not value:
        if prefix:
            yield prefix, None
    elif isinstance(value, dict) and depth < 6:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif isinstance(value, (list, tuple)) and value and depth < 6 and not all(
            item is None or isinstance(item, (str, int, float)) for item in value):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{i}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        yield prefix, ", ".join(MISSING if v is None else str(v) for v in value)
    else:
        yield prefix, value


def _all_fields(data: Any, limit: int = 300) -> str:
    """A collapsed table of every field of ``data``."""
    pairs = list(_flatten(data))
    if not pairs:
        return ""
    more = (f"<p class='note'>{len(pairs) - limit} more field(s) not shown.</p>"
            if len(pairs) > limit else "")
    rows = [[f"<code>{_e(k)}</code>", _fmt(v, ".6g")] for k, v in pairs[:limit]]
    return ("<details><summary>All fields</summary>"
            + _table(["field", "value"], rows, numeric_from=1, cls="fields") + more
            + "</details>")


# --- SVG charts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Panel:
    """One bar-chart panel: groups of bars (one per series) per category, on its own axis."""

    title: str
    categories: Sequence[str]
    series: Sequence[str]  # keys of _SERIES
    values: Sequence[Sequence[float | None]]  # [category][series]
    spec: str = ".2f"


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round axis ticks covering ``[lo, hi]`` with about ``count`` steps."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    return [start + i * step for i in range(round((stop - start) / step) + 1)]


def _tick_label(value: float, ticks: list[float]) -> str:
    """``value`` with as many decimals as the tick step needs (0.25 -> two, 50 -> none)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = len(f"{step:.6f}".rstrip("0").split(".")[1])
    return f"{0.0 if abs(value) < step * 1e-6 else value:.{decimals}f}"


def _legend(series: Sequence[str], x: float, y: float) -> str:
    parts = []
    for key in series:
        label, colour = _SERIES[key]
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{x + 14:.1f}" y="{y:.1f}">{_e(label)}</text>')
        x += 24 + 6.5 * len(label)
    return "".join(parts)


def _bar_chart(panels: Sequence[_Panel], label: str) -> str:
    """Panels of grouped vertical bars side by side, each on its own axis, one legend."""
    gap, left, top, plot_h = 16, 52, 48, 150
    series = list(dict.fromkeys(s for p in panels for s in p.series))
    # bars wide enough for their value labels (about 6 px a character at 10 px), panels for
    # their titles (about 7 px a character at 12 px)
    bar = max([30] + [6 * len(_fmt(v, p.spec)) + 6 for p in panels for row in p.values
                      for v in row])
    widths = [max(180, left + 7 * len(p.title) + 10,
                  left + 14 + len(p.categories) * (len(p.series) * bar + gap)) for p in panels]
    legend_w = sum(24 + 6.5 * len(_SERIES[key][0]) for key in series)
    width, height = max(sum(widths) + 10, round(left + legend_w)), top + plot_h + 40
    out = [(f'<svg class="chart" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{_e(label)}">'), _legend(series, left, 16)]
    x0 = 0.0
    for panel, panel_w in zip(panels, widths, strict=True):
        numbers = [v for row in panel.values for v in row if _number(v) is not None]
        ticks = _ticks(min([0.0, *numbers]), max([0.0, *numbers]) or 1.0)
        lo, hi = ticks[0], ticks[-1]

        def y(v: float, lo: float = lo, hi: float = hi) -> float:
            return top + plot_h * (hi - v) / (hi - lo)

        right = x0 + panel_w - 8
        out.append(f'<text class="title" x="{x0 + left:.1f}" y="{top - 14}">'
                   f'{_e(panel.title)}</text>')
        for t in ticks:
            out.append(f'<line class="grid" x1="{x0 + left:.1f}" x2="{right:.1f}" '
                       f'y1="{y(t):.1f}" y2="{y(t):.1f}"/><text class="tick" text-anchor="end" '
                       f'x="{x0 + left - 5:.1f}" y="{y(t) + 4:.1f}">{_tick_label(t, ticks)}</text>')
        for c, category in enumerate(panel.categories):
            gx = x0 + left + 10 + c * (len(panel.series) * bar + gap)
            for s, key in enumerate(panel.series):
                value = _number(panel.values[c][s])
                bx = gx + s * bar
                if value is None:
                    out.append(f'<text class="value" text-anchor="middle" x="{bx + bar / 2:.1f}" '
                               f'y="{y(0) - 4:.1f}">{MISSING}</text>')
                    continue
                y_top, y_bottom = sorted((y(value), y(0)))
                out.append(f'<rect x="{bx + 2:.1f}" y="{y_top:.1f}" width="{bar - 4}" '
                           f'height="{max(y_bottom - y_top, 0.5):.1f}" '
                           f'fill="{_SERIES[key][1]}"><title>{_e(_SERIES[key][0])} '
                           f'{_e(category)}: {_fmt(value, panel.spec)}</title></rect>')
                label_y = y_top - 4 if value >= 0 else y_bottom + 11
                out.append(f'<text class="value" text-anchor="middle" x="{bx + bar / 2:.1f}" '
                           f'y="{label_y:.1f}">{_fmt(value, panel.spec)}</text>')
            out.append(f'<text class="tick" text-anchor="middle" '
                       f'x="{gx + len(panel.series) * bar / 2:.1f}" y="{top + plot_h + 18}">'
                       f'{_e(category)}</text>')
        out.append(f'<line class="axis" x1="{x0 + left:.1f}" x2="{right:.1f}" y1="{y(0):.1f}" '
                   f'y2="{y(0):.1f}"/>')
        x0 += panel_w
    out.append("</svg>")
    return "".join(out)


def _timeline_chart(passes: Sequence[dict[str, Any]], label: str) -> str:
    """Each pass's ``seconds`` as a horizontal bar starting where the one before ended (pipeline
    order); cache hits in green and labelled."""
    label_w, bar_w, text_w, row_h, top = 170, 560, 170, 22, 30
    seconds = [max(_number(p.get("seconds")) or 0.0, 0.0) for p in passes]
    total = sum(seconds)
    ticks = _ticks(0.0, total or 1.0, 5)
    scale = bar_w / ticks[-1]
    width, height = label_w + bar_w + text_w, top + row_h * len(passes) + 30
    out = [(f'<svg class="chart" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{_e(label)}">'),
           (f'<rect x="{label_w}" y="8" width="10" height="10" fill="#2f6db5"/>'
           f'<text x="{label_w + 14}" y="17">ran</text>'
           f'<rect x="{label_w + 60}" y="8" width="10" height="10" fill="#3a9a5b"/>'
           f'<text x="{label_w + 74}" y="17">cache hit</text>')]
    bottom = top + row_h * len(passes)
    for t in ticks:
        x = label_w + t * scale
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" '
                   f'y2="{bottom}"/><text class="tick" text-anchor="middle" x="{x:.1f}" '
                   f'y="{bottom + 16}">{_tick_label(t, ticks)} s</text>')
    start = 0.0
    for i, (record, spent) in enumerate(zip(passes, seconds, strict=True)):
        row_y = top + i * row_h
        hit = record.get("cache") == "hit"
        colour = "#3a9a5b" if hit else "#2f6db5"
        notes = [_fmt(record.get("seconds"), ".2f", " s")]
        if hit:
            notes.append("cache hit")
        if record.get("modified") is False:
            notes.append("unchanged")
        x = label_w + start * scale
        out.append(f'<text text-anchor="end" x="{label_w - 8}" y="{row_y + 15}">'
                   f'{_e(record.get("name", "?"))}</text>'
                   f'<rect x="{x:.1f}" y="{row_y + 4}" width="{max(spent * scale, 2.0):.1f}" '
                   f'height="{row_h - 8}" fill="{colour}"><title>{_e(record.get("name", "?"))}: '
                   f'{", ".join(notes)}</title></rect>'
                   f'<text class="value" x="{x + max(spent * scale, 2.0) + 5:.1f}" '
                   f'y="{row_y + 15}">{", ".join(notes)}</text>')
        start += spent
    out.append(f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{top - 4}" '
               f'y2="{bottom}"/></svg>')
    return "".join(out)


# --- spectrograms and audio ----------------------------------------------------------------


def spectrogram_db(wav: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """``20 log10 |STFT|`` as ``[frequency, frame]`` (periodic Hann window, no padding beyond
    what one frame needs); NaN and infinite samples count as zero."""
    x = np.nan_to_num(np.asarray(wav, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T
    return 20.0 * np.log10(magnitude + 1e-10)


def spectrogram_rgb(db: np.ndarray, top_db: float,
                    range_db: float = DYNAMIC_RANGE_DB) -> np.ndarray:
    """``db`` mapped through viridis over ``[top_db - range_db, top_db]``, as ``[height, width,
    3]`` uint8 with the lowest frequency in the bottom row."""
    level = np.clip((db - (top_db - range_db)) / range_db, 0.0, 1.0)
    return VIRIDIS[np.round(level[::-1] * 255).astype(np.intp)]


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (``[height, width, 3]`` uint8): IHDR, one IDAT of rows with
    the Sub filter, IEND; chunk CRCs from ``zlib.crc32``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_png wants a non-empty [height, width, 3] array, got {rgb.shape}")
    height, width, _ = rgb.shape
    # Sub filter: each byte minus the same channel of the pixel to its left (mod 256); a
    # spectrogram's neighbouring frames are alike, so this compresses about twice as well
    sub = np.diff(rgb.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
    raw = np.concatenate([np.ones((height, 1), np.uint8), sub.reshape(height, width * 3)],
                         axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bit, RGB, no interlace
    return (_PNG_SIGNATURE + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b""))


def encode_wav(wav: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes of ``wav`` (clipped to [-1, 1]; NaN written as silence)."""
    samples = np.clip(np.nan_to_num(np.asarray(wav, dtype=np.float32)), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _listening_section(clip: ReportClip) -> str:
    """Spectrogram and player per signal of ``clip``, all on one dB scale."""
    cap = round(CLIP_SECONDS * clip.sample_rate)
    signals = [(label, np.asarray(wav, dtype=np.float32)[:cap]) for label, wav in clip.signals()]
    spectra = [spectrogram_db(wav) for _, wav in signals]
    top_db = max(float(s.max()) for s in spectra)  # one scale: levels compare across rows
    seconds = max(len(wav) for _, wav in signals) / clip.sample_rate
    nyquist_khz = clip.sample_rate / 2000
    rows = []
    for (label, wav), spectrum in zip(signals, spectra, strict=True):
        png = _data_uri("image/png", encode_png(spectrogram_rgb(spectrum, top_db)))
        wav_uri = _data_uri("audio/wav", encode_wav(wav, clip.sample_rate))
        rows.append(
            f'<div class="clip"><div class="label"><b>{_e(label)}</b>'
            f'<span class="note">{len(wav) / clip.sample_rate:.2f} s</span>'
            f'<audio controls preload="auto" src="{wav_uri}"></audio></div>'
            f'<div class="spec"><div class="faxis"><span>{nyquist_khz:g} kHz</span>'
            f'<span>0</span></div><img alt="{_e(label)} spectrogram" src="{png}" '
            f'width="{spectrum.shape[1]}" height="{spectrum.shape[0]}"></div></div>')
    return (f'<section id="listening"><h2>Listening: {_e(clip.name)}</h2>'
            f'<p class="note">The first {seconds:.2f} s of the clip at {clip.sample_rate} Hz. '
            f"Log-magnitude spectrograms (Hann window, {N_FFT}-point FFT, hop {HOP}), all on "
            f"one scale: the loudest bin of any row is the top colour and "
            f"{DYNAMIC_RANGE_DB:g} dB below it the bottom; time runs left to right over "
            f"0–{seconds:.2f} s, frequency from 0 at the bottom to {nyquist_khz:g} kHz.</p>"
            + "".join(rows) + "</section>")


# --- sections ------------------------------------------------------------------------------


def _summary(report: dict[str, Any]) -> str:
    rows = []
    for name, t in _dict(report.get("targets")).items():
        t = _dict(t)
        delta = _dict(t.get("quality_delta"))
        validation = _dict(t.get("validation"))
        status = validation.get("status")
        why = validation.get("why") or validation.get("device")
        status_cell = MISSING if status is None else (
            f'<span title="{_e(why)}">{_e(status)}</span>' if why else _e(status))
        rows.append([_e(name), _fmt(t.get("speedup"), ".2f"), _fmt(t.get("speedup_10s"), ".2f"),
                     _fmt(t.get("throughput_speedup"), ".2f"),
                     _fmt(t.get("size_reduction"), ".2f"), _fmt(t.get("memory_reduction"), ".2f"),
                     _fmt(delta.get("si_sdr"), "+.4f"), _fmt(delta.get("pesq"), "+.4f"),
                     _fmt(delta.get("stoi"), "+.5f"), status_cell])
    table = _table(["target", "speedup (1 s)", "speedup (10 s)", "throughput ×", "size ×",
                    "memory ×", "ΔSI-SDR dB", "ΔPESQ", "ΔESTOI", "validation"], rows)
    return (f'<section id="summary"><h2>Summary</h2>{table}<p class="note">Ratios are the '
            "fp32 PyTorch model's measurement over the artifact's (higher is better); deltas "
            "are artifact minus fp32 PyTorch on the evaluation set.</p></section>")


def _gates(gates: Any) -> str:
    head = '<section id="gates"><h2>Quality gates</h2>'
    checks = _get(gates, "checks")
    if not isinstance(checks, dict) or not checks:
        return head + "<p>No quality gates were checked in this build.</p></section>"
    limits = _dict(_get(gates, "limits"))
    rows = []
    for target, items in checks.items():
        for c in items or []:
            c = _dict(c)
            status = str(c.get("status", MISSING))
            rows.append([_e(target), _e(c.get("metric", MISSING)), _e(c.get("bucket", MISSING)),
                         _fmt(c.get("files")),
                         _fmt(c.get("delta"), "+.4f"), _fmt(c.get("max_drop"), "g"),
                         f'<span class="status {_e(status)}">{_e(status)}</span>'])
    return (head + f"<p>Largest drop allowed against the fp32 PyTorch model in every input-SNR "
            f"bucket and overall: SI-SDR {_fmt(limits.get('si_sdr'), 'g')} dB, PESQ "
            f"{_fmt(limits.get('pesq'), 'g')}.</p>"
            + _table(["target", "metric", "bucket", "files", "Δ", "max drop", "status"], rows,
                     numeric_from=3) + "</section>")


def _latency(name: str, t: dict[str, Any]) -> str:
    latency = _dict(t.get("latency_ms"))
    if not latency:
        return ""
    panels, rows = [], []
    for length, sides in latency.items():
        sides = _dict(sides)
        quantiles = ("p50", "p99")
        panels.append(_Panel(f"{length} of audio (ms)", quantiles, ("baseline", "artifact"),
                             [[_get(sides, side, q) for side in ("baseline", "artifact")]
                              for q in quantiles]))
        rows += [[f"latency {_e(length)} {q} (ms)", _fmt(_get(sides, "baseline", q), ".2f"),
                  _fmt(_get(sides, "artifact", q), ".2f")] for q in quantiles]
    rps = _dict(t.get("throughput_rps"))
    if rps:
        rows.append([f"throughput, batch {_fmt(rps.get('batch'))} (clips/s)",
                     _fmt(rps.get("baseline"), ".1f"), _fmt(rps.get("artifact"), ".1f")])
    timing = _dict(t.get("timing"))
    note = (f"<p class='note'>Interleaved runs, medians; "
            f"{_fmt(timing.get('blocks_rerun_for_outside_load', 0))} block(s) re-run for outside "
            f"CPU load, {_fmt(timing.get('blocks_measured_under_outside_load', 0))} kept under "
            "load after retries (treat ratios under 1.2x as noise then).</p>" if timing else "")
    return ("<h3>Latency</h3>" + _bar_chart(panels, f"{name} latency")
            + _table(["measure", "fp32 PyTorch", "artifact"], rows) + note)


def _size(name: str, t: dict[str, Any]) -> str:
    size = _dict(t.get("size_bytes"))
    rss = _dict(t.get("peak_rss_mb"))
    if not size and not rss:
        return ""
    sides = ("baseline", "artifact")
    panels, rows = [], []
    if size:
        megabytes = [(size[s] / 1e6 if _number(size.get(s)) is not None else None) for s in sides]
        panels.append(_Panel("size on disk (MB)", ("",), sides, [megabytes], ".3g"))
        rows.append(["size on disk (bytes)", _fmt(size.get("baseline")),
                     _fmt(size.get("artifact"))])
    if rss:
        panels.append(_Panel("peak RSS, fresh process (MiB)", ("",), sides,
                             [[rss.get(s) for s in sides]], ".1f"))
        audio = rss.get("seconds_of_audio")
        rows.append([f"peak RSS (MiB){f', {_fmt(audio)} s of audio' if audio else ''}",
                     _fmt(rss.get("baseline"), ".1f"), _fmt(rss.get("artifact"), ".1f")])
    return ("<h3>Size and memory</h3>" + _bar_chart(panels, f"{name} size and memory")
            + _table(["measure", "fp32 PyTorch", "artifact"], rows))


_METRICS = (("si_sdr", "SI-SDR (dB)", ".3f"), ("pesq", "PESQ-WB", ".3f"), ("stoi", "ESTOI", ".4f"))


def _quality(name: str, t: dict[str, Any]) -> str:
    quality = _dict(t.get("quality"))
    sides = [s for s in ("noisy", "baseline", "artifact") if isinstance(quality.get(s), dict)]
    if not sides:
        return ""
    panels = [_Panel(title, ("",), sides, [[quality[s].get(key) for s in sides]],
                     spec) for key, title, spec in _METRICS]
    rows = [[_e(_SERIES[s][0])] + [_fmt(quality[s].get(key), spec) for key, _, spec in _METRICS]
            for s in sides]
    failed = quality.get("failed_files") or []
    note = f"<p class='note'>{len(failed)} file(s) could not be scored.</p>" if failed else ""
    skipped = quality.get("skipped_files") or []
    if skipped:
        note += (f"<p class='note'>{len(skipped)} pair(s) left out (silent clean reference): "
                 f"{_e(', '.join(str(r.get('file')) for r in skipped))}.</p>")
    return (f"<h3>Quality</h3><p>On {_fmt(quality.get('files'))} pair(s) from "
            f"<code>{_e(quality.get('eval_set', MISSING))}</code>.</p>"
            + _bar_chart(panels, f"{name} quality")
            + _table(["", "SI-SDR dB", "PESQ-WB", "ESTOI"], rows) + note)


def _bucket_order(name: str) -> float:
    """Sort key of an input-SNR bucket label (``<0dB``, ``0-5dB``, ``>=20dB``)."""
    if name.startswith("<"):
        return -math.inf
    found = re.search(r"-?\d+(\.\d+)?", name)
    return float(found.group()) if found else math.inf


def _buckets(name: str, t: dict[str, Any]) -> str:
    buckets = _dict(_get(t, "quality", "buckets"))
    if not buckets:
        return ""
    labels = sorted(buckets, key=lambda b: _bucket_order(str(b)))
    sides = ("baseline", "artifact")
    panels = [_Panel(title, [str(b) for b in labels], sides,
                     [[_get(buckets[b], s, key) for s in sides] for b in labels], spec)
              for key, title, spec in _METRICS]
    rows = []
    for b in labels:
        group = _dict(buckets[b])
        row = [_e(b), _fmt(group.get("files"))]
        for key, _, spec in _METRICS:
            base, art = _get(group, "baseline", key), _get(group, "artifact", key)
            delta = (art - base if _number(base) is not None and _number(art) is not None
                     else None)
            row += [_fmt(base, spec), _fmt(art, spec), _fmt(delta, "+.4f")]
        rows.append(row)
    header = ["input SNR", "files"] + [f"{label} {part}" for _, label, _ in _METRICS
                                       for part in ("fp32", "artifact", "Δ")]
    return ("<h3>Quality per input-SNR bucket</h3>"
            + _bar_chart(panels, f"{name} quality per input-SNR bucket")
            + _table(header, rows))


def _profile(t: dict[str, Any]) -> str:
    profile = t.get("profile")
    rows = profile.get("rows") if isinstance(profile, dict) else profile
    if not isinstance(rows, list):
        return ""
    rows = [r for r in rows if isinstance(r, dict) and "name" in r
            and _number(r.get("share")) is not None]
    if not rows:
        return ""
    rows.sort(key=lambda r: -r["share"])
    percent = sum(r["share"] for r in rows) > 1.5  # shares given in percent, not fractions
    top, cumulative = [], 0.0
    for r in rows:
        share = r["share"] / 100 if percent else r["share"]
        cumulative += share
        top.append((r, share, cumulative))
        if cumulative > 0.5:
            break

    def ms(r: dict[str, Any]) -> Any:
        return r.get("ms", r.get("time_ms"))

    def gflops(r: dict[str, Any]) -> Any:
        if "gflops" in r:
            return r["gflops"]
        flops, time_ms = _number(r.get("flops")), _number(ms(r))
        return flops / (time_ms * 1e6) if flops is not None and time_ms else None

    extra = [(label, fn, spec) for label, fn, spec in (
        ("kind", lambda r: r.get("kind"), ""), ("ms", ms, ".3f"), ("GFLOP/s", gflops, ".2f"),
        ("of roofline", lambda r: r.get("attained"), ".0%"))
        if any(fn(r) is not None for r, _, _ in top)]
    table_rows = []
    for i, (r, share, cum) in enumerate(top, 1):
        bar = (f'<span class="bar" style="width:{max(0.0, min(share, 1.0)) * 120:.0f}px">'
               "</span>")
        table_rows.append([str(i), _e(r["name"])]
                          + [_e(fn(r)) if spec == "" and fn(r) is not None else _fmt(fn(r), spec)
                             for _, fn, spec in extra]
                          + [f"{bar} {share:.1%}", f"{min(cum, 1.0):.1%}"])
    about = _dict(profile) if isinstance(profile, dict) else {}
    what = ", ".join(f"{k} {_e(about[k])}" for k in ("subject", "backend", "unit",
                                                     "audio_seconds") if about.get(k) is not None)
    header = ["#", "name"] + [label for label, _, _ in extra] + ["share", "cumulative"]
    text_columns = 3 if extra and extra[0][0] == "kind" else 2  # left-aligned: #, name, kind
    return (f"<h3>Profile: bottlenecks</h3><p>The top {len(top)} of {len(rows)} row(s), together "
            f"{min(cumulative, 1.0):.1%} of the time{f' ({what})' if what else ''}.</p>"
            + _table(header, table_rows, numeric_from=text_columns)
            + _all_fields({k: v for k, v in about.items() if k not in ("rows", "by_kind")}))


def _precision(t: dict[str, Any]) -> str:
    p = t.get("precision")
    if not isinstance(p, dict):
        return ""
    parts = [f"<p>Precision shipped: <b>{_e(p.get('shipped', MISSING))}</b>"
             + (f" ({_e(p['reason'])})." if p.get("reason") else ".") + "</p>"]
    layout = _dict(p.get("layout"))
    if layout:
        parts.append(f"<p>INT8 layout for this CPU ({_e(p.get('cpu_int8_kernel', MISSING))}): "
                     f"{_e(layout.get('activation_type', MISSING))} activations, "
                     f"{_e(layout.get('weight_type', MISSING))} weights, reduce_range="
                     f"{_e(layout.get('reduce_range', MISSING))} "
                     f"({_e(layout.get('reason', MISSING))}).</p>")
    fidelity = _dict(p.get("fidelity_db"))
    if fidelity:
        parts.append(f"<p>INT8 plan: {_fmt(p.get('layers_int8'))} layer(s) INT8, "
                     f"{_fmt(p.get('layers_int8_weights'))} with INT8 weights only; worst "
                     f"calibration clip {_fmt(fidelity.get('min'))} dB SI-SDR against fp32 "
                     f"(floor {_fmt(fidelity.get('floor'))} dB); INT8 ran "
                     f"{_fmt(p.get('int8_speedup_vs_fp32_onnx'), '.2f')}x the fp32 ONNX "
                     "speed.</p>")
    layers = [_dict(x) for x in p.get("layers_fp32") or []]
    if layers:
        why = [x.get("why") for x in layers]
        table = _table(["layer kept fp32", "kind", "why"], [
            [f"<code>{_e(x.get('name', MISSING))}</code>", _e(x.get("kind", MISSING)),
             _e("; ".join(map(str, w)) if isinstance(w, list) else w or MISSING)]
            for x, w in zip(layers, why, strict=True)], numeric_from=3)
        # a long list (every layer of a model that fell back) would bury the rest of the page
        parts.append(table if len(layers) <= 6 else
                     f"<details><summary>{len(layers)} layers kept fp32</summary>{table}"
                     "</details>")
    always = p.get("kept_fp32_always") or []
    if always:
        parts.append("<ul>" + "".join(f"<li>fp32 {_e(note)}</li>" for note in always) + "</ul>")
    return "<h3>Precision</h3>" + "".join(parts) + _all_fields(p)


def _shrink(t: dict[str, Any]) -> str:
    shrink = t.get("shrink")
    if not isinstance(shrink, dict):
        return ""
    rows = []
    for name, made in shrink.items():
        made = _dict(made)
        params, macs = _dict(made.get("params")), _dict(made.get("macs_per_second"))
        latency, delta = _dict(made.get("torch_latency_ms_1s")), _dict(made.get("quality_delta"))
        tune = _dict(made.get("fine_tune"))
        outcome = ("refused: " + str(made["refused"]) if made.get("refused") else
                   "did not apply: " + str(made["skipped"]) if made.get("skipped") else
                   "applied" if made.get("modified") else "unchanged")
        mmacs = {side: (_number(macs.get(side)) or 0) / 1e6 if side in macs else None
                 for side in ("before", "after")}
        tuning = (f"{_fmt(tune.get('steps'))} steps, {_fmt(tune.get('seconds'), '.0f')} s, "
                  f"{_e(tune.get('stop_reason', MISSING))}") if tune else MISSING
        rows.append([
            f"<code>{_e(name)}</code>", _e(outcome),
            f"{_fmt(params.get('before'))} → {_fmt(params.get('after'))}",
            f"{_fmt(mmacs['before'], '.1f')} → {_fmt(mmacs['after'], '.1f')}",
            f"{_fmt(latency.get('before'), '.2f')} → {_fmt(latency.get('after'), '.2f')}",
            _fmt(delta.get("si_sdr"), "+.3f"), _fmt(delta.get("pesq"), "+.3f"), tuning,
        ])
    table = _table(["pass", "outcome", "parameters", "MMACs per s of audio",
                    "torch ms on 1 s", "ΔSI-SDR dB", "ΔPESQ", "fine-tuning"], rows,
                   numeric_from=8)
    return "<h3>Pruning and distillation</h3>" + table + _all_fields(shrink)


def _streaming(name: str, t: dict[str, Any]) -> str:
    s = t.get("streaming")
    if not isinstance(s, dict):
        return ""
    states = s.get("states")
    facts = [
        ("file", f"<code>{_e(name)}/{_e(s.get('file', MISSING))}</code>"),
        ("hop (samples)", _fmt(s.get("hop"))),
        ("output delay", (f"{_fmt(s.get('delay_samples'))} samples "
                         f"({_fmt(s.get('delay_ms'), 'g')} ms)")),
        ("algorithmic latency (ms)", _fmt(s.get("algorithmic_latency_ms"), "g")),
        ("state tensors", _fmt(len(states)) if isinstance(states, (list, dict)) else MISSING),
        ("state floats", _fmt(s.get("state_floats"))),
        ("equivalence tolerance", _fmt(s.get("tolerance"), "g")),
    ]
    eq = _dict(s.get("equivalence"))
    if eq:
        facts += [("equivalence audio", (f"{_e(eq.get('audio', MISSING))} "
                                        f"({_fmt(eq.get('files'))} file(s))")),
                  ("max abs vs offline", _fmt(eq.get("max_abs"), ".3g")),
                  ("max abs vs float64 run", _fmt(eq.get("max_abs_vs_float64"), ".3g")),
                  ("max |ΔSI-SDR| (dB)", _fmt(eq.get("max_abs_delta_si_sdr"), ".2g"))]
    lat = _dict(s.get("latency"))
    if lat:
        load = _dict(lat.get("under_load"))
        miss = _number(lat.get("deadline_miss_share"))
        miss_load = _number(load.get("deadline_miss_share"))
        facts += [("per-hop latency p50 / p99 (ms)",
                   (f"{_fmt(_get(lat, 'per_hop_ms', 'p50'), '.3f')} / "
                   f"{_fmt(_get(lat, 'per_hop_ms', 'p99'), '.3f')}")),
                  ("real-time factor", _fmt(lat.get("real_time_factor"), ".3f")),
                  ("offline artifact, ms per hop of audio",
                   _fmt(lat.get("offline_ms_per_hop"), ".3f")),
                  (f"hops over their {_fmt(lat.get('hop_ms'), 'g')} ms deadline",
                   _fmt(None if miss is None else 100 * miss, ".2f", "%")),
                  (f"same, {_fmt(load.get('busy_processes'))} busy processes",
                   (f"{_fmt(None if miss_load is None else 100 * miss_load, '.2f', '%')} (p99 "
                   f"{_fmt(_get(load, 'per_hop_ms', 'p99'), '.3f')} ms)"))]
    return ("<h3>Streaming</h3>" + _table(["streaming artifact", "value"], [list(f) for f in facts])
            + _all_fields(s))


def _gpu(t: dict[str, Any]) -> str:
    gpu = t.get("gpu")
    if not isinstance(gpu, dict):
        return ""
    parts = []
    fp16 = _dict(gpu.get("fp16_onnx"))
    if fp16:
        parts.append(f"<p>FP16 ONNX: {_fmt(fp16.get('agreement_db'), '.1f')} dB SI-SDR against "
                     f"the fp32 ONNX on the parity clip ({_e(fp16.get('simulation', 'CPU'))}); "
                     f"{_fmt(fp16.get('size_reduction'), '.2f')}x smaller than fp32 ONNX.</p>")
    for key, label in (("aot_inductor", "AOTInductor package"), ("tensorrt", "Torch-TensorRT")):
        made = _dict(gpu.get(key))
        if made.get("skipped"):
            parts.append(f"<p>{label}: not built: {_e(made['skipped'])}.</p>")
        elif made:
            parts.append(f"<p>{label} <code>{_e(made.get('file', MISSING))}</code>: "
                         f"{_e(made.get('precision', MISSING))}, "
                         f"{_fmt(made.get('agreement_db'), '.1f')} dB SI-SDR against fp32 eager, "
                         f"{_fmt(made.get('size_bytes'))} bytes.</p>")
    measured = _dict(gpu.get("measured"))
    latency = _dict(measured.get("latency_ms"))
    if latency:
        device = _dict(measured.get("device"))
        parts.append(f"<p>Measured on {_e(device.get('name', MISSING))} (compute capability "
                     f"{_e(device.get('capability', MISSING))}, CUDA "
                     f"{_e(device.get('cuda', MISSING))}), {_fmt(measured.get('clip_seconds'))} s "
                     "clips, CUDA events:</p>")
        throughput = _dict(measured.get("throughput"))
        rows = []
        for model, stats in latency.items():
            best = max((_number(_dict(r).get("rps")) or 0.0
                        for r in _dict(throughput.get(model)).values()), default=None)
            rows.append([_e(model), _fmt(_get(stats, "p50"), ".3f"),
                         _fmt(_get(stats, "p99"), ".3f"), _fmt(best or None, ".1f")])
        parts.append(_table(["model", "p50 ms", "p99 ms", "best clips/s"], rows))
    for model, why in _dict(measured.get("not_measured")).items():
        parts.append(f"<p>Not measured: {_e(model)}: {_e(why)}.</p>")
    return "<h3>GPU</h3>" + "".join(parts) + _all_fields(gpu)


def _target(index: int, name: str, t: dict[str, Any]) -> str:
    validation = _dict(t.get("validation"))
    head = (f'<section class="target" id="target-{index}"><h2>Target: {_e(name)}</h2>'
            f"<p>Artifact <code>{_e(t.get('artifact', MISSING))}</code>; pipeline "
            f"<code class='pipeline'>{_e(t.get('pipeline', MISSING))}</code>.</p>")
    if validation.get("status") == "unvalidated":
        head += f"<p class='warn'><b>Unvalidated:</b> {_e(validation.get('why', ''))}.</p>"
    passes = [_dict(p) for p in t.get("passes") or []]
    timeline = ("<h3>Pass timeline</h3>" + _timeline_chart(passes, f"{name} pass timeline")
                if passes else "")
    return (head + _latency(name, t) + _size(name, t) + _quality(name, t) + _buckets(name, t)
            + _shrink(t) + _precision(t) + _streaming(name, t) + _gpu(t) + _profile(t) + timeline
            + "</section>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232b;
margin:0 auto;max-width:1200px;padding:16px 28px;background:#fff}
h1{font-size:24px;margin:8px 0}h2{font-size:19px;margin:28px 0 8px;
border-bottom:1px solid #d6dbe1;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px}th,td{border:1px solid #d6dbe1;
padding:3px 8px;vertical-align:top}th{background:#f2f4f7;text-align:left}td.n{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}
code{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f2f4f7;padding:1px 3px}
code.pipeline{word-break:break-all}.note{color:#5b6573;font-size:12.5px}
.warn{background:#fff4e0;border-left:4px solid #e0a030;padding:4px 8px}
.status.passed{color:#1d7a3a}.status.failed{color:#b3261e;font-weight:bold}
.status.skipped{color:#6b7280}details{margin:4px 0 10px}summary{cursor:pointer;color:#2f6db5}
table.fields td{font-size:12px}.bar{display:inline-block;height:10px;background:#2f6db5;
vertical-align:middle}svg.chart{display:block;max-width:100%;height:auto;margin:6px 0}
svg.chart text{font:11px system-ui,sans-serif;fill:#1d232b}svg.chart text.title{font-weight:600;
font-size:12px}svg.chart text.tick{fill:#5b6573}svg.chart text.value{font-size:10px}
svg.chart line.grid{stroke:#e3e7ec}svg.chart line.axis{stroke:#5b6573}
.clip{display:flex;gap:16px;align-items:center;margin:10px 0}.clip .label{width:300px;
display:flex;flex-direction:column;gap:4px}.clip audio{width:300px}
.spec{display:flex;gap:4px}.faxis{display:flex;flex-direction:column;
justify-content:space-between;font-size:11px;color:#5b6573;text-align:right;width:42px}
.spec img{width:800px;max-width:calc(100vw - 420px);height:200px;display:block}
"""


def render_html(report: dict[str, Any], clip: ReportClip | None = None) -> str:
    """The whole ``report.html`` page for ``report`` (``report.json``'s document), with the
    listening section for ``clip`` when given."""
    model = _dict(report.get("model"))
    machine = _dict(report.get("machine"))
    base = _dict(report.get("baseline"))
    name = model.get("name", MISSING)
    p50 = _get(base, "latency_ms", "p50")
    intro = (f"<p>Created {_e(report.get('created', MISSING))} on "
             f"{_e(machine.get('cpu', MISSING))} ({_e(machine.get('cores', MISSING))} cores), "
             + (f"{_e(base['threads'])} thread(s), " if base.get("threads") else "")
             + f"secompile {_e(report.get('secompile', MISSING))}. "
             + (f"Baseline: PyTorch fp32 eager, p50 {_fmt(p50, '.2f')} ms per 1 s of audio."
                if _number(p50) is not None else
                "Baseline: PyTorch fp32 eager, timed per target below where a target was timed.")
             + "</p>")
    targets = _dict(report.get("targets"))
    body = [f"<h1>secompile report: {_e(name)}</h1>", intro, _summary(report),
            _gates(report.get("gates"))]
    body += [_target(i, str(t), _dict(entry)) for i, (t, entry) in enumerate(targets.items())]
    if clip is not None:
        body.append(_listening_section(clip))
    about = {"model": model, "settings": report.get("settings"), "machine": machine,
             "versions": report.get("versions")}
    body.append('<section id="build"><h2>Build</h2>' + _all_fields(about) + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>secompile report: {_e(name)}</title><style>{_CSS}</style></head>"
            "<body><main>" + "\n".join(body) + "</main></body></html>\n")


def write_html_report(report: dict[str, Any], path: Path | str,
                      clip: ReportClip | None = None) -> Path:
    """Render ``report`` (and ``clip``) to ``path`` atomically: written to a temporary file in
    the same folder, then renamed over ``path``. Returns ``path``."""
    path = Path(path)
    text = render_html(report, clip)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the page from other readers
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
