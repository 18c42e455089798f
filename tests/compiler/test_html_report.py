"""``report.html``: built from a real report of the default model, checked for structure (it
parses, its tags balance, every section and chart is there), its embedded PNGs and WAVs
(decoded here), escaping, missing and NaN values, atomic writing, and rendered in headless
Chromium with no console error; a deliberately broken page proves the console check catches
errors."""

from __future__ import annotations

import base64
import copy
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from secompile.calibration.audio import read_audio
from secompile.compiler.app.build import BuildRequest, run_build
from secompile.compiler.reporting.html import (
    CLIP_SECONDS,
    HOP,
    N_FFT,
    VIRIDIS,
    ReportClip,
    encode_png,
    render_html,
    spectrogram_db,
    spectrogram_rgb,
    write_html_report,
)
from tests.conftest import CHROMIUM, requires_chromium

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo_audio" / "noisy" / "demo.wav"
RATE = 16000
PIPELINE = "fuse-conv-bn,export-onnx,validate{repeats=4 long_repeats=2 batch=2 memory=false}"
SHOT = Path("/tmp/html_report_shot.png")  # left for a person to look at
# Chromium logs every console message of the page (console.*, uncaught exceptions) to stderr
# as "[pid:tid:date:INFO:CONSOLE:line] "message", source: URL (line)" (older builds:
# "INFO:CONSOLE(line)]"). The page has no script, so any such line is an error.
CONSOLE_LINE = re.compile(r":CONSOLE\b|\bUncaught\b")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A real build of the default model for cpu with a short validate; its report and folder."""
    out = tmp_path_factory.mktemp("build")
    report = run_build(BuildRequest(model=None, out=out, targets=("cpu",), pipeline=PIPELINE,
                                    ray=None))
    return report, out


@pytest.fixture(scope="module")
def report(build: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return build[0]


@pytest.fixture(scope="module")
def clip() -> ReportClip:
    """The demo clip (4.7 s, capped to 4 s in the page) with simple stand-in outputs."""
    noisy = read_audio(DEMO, RATE)
    reference = (0.5 * noisy).astype(np.float32)
    return ReportClip("demo.wav", RATE, noisy, reference, {"cpu": (reference * 0.99)})


# --- helpers -------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collects headings, attributes and text and checks that every element closes in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.headings: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.tags: list[str] = []
        self.text: list[str] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    return parser


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (any row filters) to ``[h, w, c]``,
    checking every chunk's CRC. Rows are unfiltered along anti-diagonals, so each numpy step
    handles every pixel whose left, upper and upper-left neighbours are already known."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    assert raw.size == height * (width * channels + 1), "IDAT size does not match IHDR"
    raw = raw.reshape(height, width * channels + 1)
    filters = raw[:, 0]
    assert filters.max() <= 4, "unknown PNG row filter"
    residual = raw[:, 1:].reshape(height, width, channels).astype(np.int32)
    out = np.zeros((height + 1, width + 1, channels), np.int32)  # a zero row and column first
    flat = out.reshape(-1, channels)
    stride = width + 1
    for diagonal in range(height + width - 1):
        ys = np.arange(max(0, diagonal - width + 1), min(height - 1, diagonal) + 1)
        xs = diagonal - ys
        index = (ys + 1) * stride + xs + 1
        a, b, c = flat[index - 1], flat[index - stride], flat[index - stride - 1]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        predictor = np.choose(filters[ys][:, None], (np.zeros_like(a), a, b, (a + b) >> 1, paeth))
        flat[index] = (residual[ys, xs] + predictor) & 255
    return out[1:, 1:].astype(np.uint8)


def data_uris(parser: PageParser, tag: str, mime: str) -> list[bytes]:
    prefix = f"data:{mime};base64,"
    found = [v for t, k, v in parser.attrs if t == tag and k == "src"]
    assert all(v.startswith(prefix) for v in found), [v[:40] for v in found]
    return [base64.b64decode(v[len(prefix):], validate=True) for v in found]


def retarget(report: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A deep copy of ``report`` with target ``old`` renamed ``new`` (order kept)."""
    copied = copy.deepcopy(report)
    copied["targets"] = {new if k == old else k: v for k, v in copied["targets"].items()}
    checks = (copied.get("gates") or {}).get("checks")
    if checks:
        copied["gates"]["checks"] = {new if k == old else k: v for k, v in checks.items()}
    return copied


def run_chromium(page: Path, shot: Path, workdir: Path) -> tuple[int, str]:
    """Screenshot ``page`` in headless Chromium; its exit code and stderr."""
    profile = workdir / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--window-size=1280,4000",
               f"--screenshot={shot}", page.resolve().as_uri()]
    # its own session, so a hung browser and its helper processes are stopped together
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within 60 s on {page}")
    return process.returncode, stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def expected_charts(report: dict[str, Any]) -> int:
    count = 0
    for t in report["targets"].values():
        count += bool(t.get("latency_ms")) + bool(t.get("size_bytes") or t.get("peak_rss_mb"))
        count += bool(t.get("quality")) + bool((t.get("quality") or {}).get("buckets"))
        count += bool(t.get("passes"))
    return count


# --- structure -----------------------------------------------------------------------------


def test_page_has_every_section_chart_image_and_player(report: dict, clip: ReportClip) -> None:
    page = render_html(report, clip)
    parser = parse(page)
    assert page.startswith("<!DOCTYPE html>") and parser.tags.count("html") == 1
    for heading in ("secompile report: default", "Summary", "Quality gates", "Target: cpu",
                    "Latency", "Size and memory", "Quality", "Quality per input-SNR bucket",
                    "Pass timeline", "Listening: demo.wav", "Build"):
        assert heading in parser.headings, (heading, parser.headings)
    # an optional section exactly when the report has its data
    cpu = report["targets"]["cpu"]
    for heading, key in (("Precision", "precision"), ("Streaming", "streaming"), ("GPU", "gpu"),
                         ("Profile: bottlenecks", "profile")):
        assert (heading in parser.headings) == bool(cpu.get(key)), heading
    assert page.count("<svg") == parser.tags.count("svg") == expected_charts(report) == 5
    assert page.count('<svg class="chart"') == 5
    # the summary row carries the report's numbers, formatted as report.md does
    assert f"<td class=\"n\">{cpu['speedup']:.2f}</td>" in page
    assert f"<td class=\"n\">{cpu['quality_delta']['si_sdr']:+.4f}</td>" in page
    assert cpu["validation"]["status"] in page
    # one timeline bar per pass, in pipeline order
    names = [p["name"] for p in cpu["passes"]]
    positions = [page.index(f">{name}</text>") for name in names]
    assert positions == sorted(positions) and names == ["fuse-conv-bn", "export-onnx", "validate"]


def test_page_is_self_contained(report: dict, clip: ReportClip) -> None:
    page = render_html(report, clip)
    parser = parse(page)
    links = [(t, k, v) for t, k, v in parser.attrs if k in ("src", "href", "srcset", "poster",
                                                             "action", "data", "xlink:href")]
    assert links and all(v.startswith("data:") for _, _, v in links), links[:3]
    assert "http://" not in page and "https://" not in page
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "@import" not in page and "url(" not in page and "@font-face" not in page


def test_spectrograms_are_valid_pngs_of_the_capped_clip(report: dict, clip: ReportClip) -> None:
    parser = parse(render_html(report, clip))
    pngs = data_uris(parser, "img", "image/png")
    assert len(pngs) == 2 + len(clip.artifacts)
    samples = int(CLIP_SECONDS * RATE)
    frames = 1 + (samples - N_FFT) // HOP
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert (width, height) == (frames, N_FFT // 2 + 1)
        image = read_png(png)  # checks CRCs and the IDAT length too
        assert image.shape == (height, width, 3)
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # a picture, not a flat fill
    alts = [v for t, k, v in parser.attrs if t == "img" and k == "alt"]
    assert alts == ["noisy input spectrogram", "fp32 PyTorch spectrogram",
                    "cpu artifact spectrogram"]


def test_players_hold_16_bit_wavs_of_the_capped_clip(report: dict, clip: ReportClip) -> None:
    parser = parse(render_html(report, clip))
    wavs = data_uris(parser, "audio", "audio/wav")
    assert len(wavs) == 3
    assert sum(1 for t, k, _ in parser.attrs if t == "audio" and k == "controls") == 3
    assert len(clip.noisy) > CLIP_SECONDS * RATE  # the demo clip is longer: the cap applies
    for payload, (_, source) in zip(wavs, clip.signals(), strict=True):
        audio, rate = sf.read(io.BytesIO(payload), dtype="float32")
        assert rate == RATE and audio.ndim == 1 and len(audio) == int(CLIP_SECONDS * RATE)
        assert sf.info(io.BytesIO(payload)).subtype == "PCM_16"
        assert np.max(np.abs(audio - source[: len(audio)])) < 1e-4


# --- escaping, missing and NaN values ----------------------------------------------------


def test_text_from_the_report_is_escaped(report: dict, clip: ReportClip) -> None:
    evil = '<script>alert("x")</script>'
    hostile = retarget(report, "cpu", evil)
    hostile["targets"][evil]["pipeline"] = f"fuse-conv-bn{evil}&more"
    hostile["model"]["name"] = f"<b onmouseover=x>{evil}"
    hostile["targets"][evil]["passes"][0]["name"] = evil
    hostile_clip = ReportClip(f"{evil}.wav", RATE, clip.noisy, clip.reference,
                              {evil: clip.artifacts["cpu"]})
    page = render_html(hostile, hostile_clip)
    parser = parse(page)
    assert "<script" not in page.lower() and "<b onmouseover" not in page
    assert "script" not in parser.tags
    assert not [v for _, k, v in parser.attrs if k.startswith("on")]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "fuse-conv-bn&lt;script&gt;" in page and "&amp;more" in page
    text = "".join(parser.text)
    assert f"Target: {evil}" in text and f"Listening: {evil}.wav" in text


def test_missing_sections_render_without_error(report: dict) -> None:
    bare = copy.deepcopy(report)
    del bare["gates"]
    cpu = bare["targets"]["cpu"]
    for key in ("streaming", "precision", "gpu", "profile", "quality", "latency_ms", "timing",
                "throughput_rps", "peak_rss_mb", "size_bytes", "quality_delta", "validation"):
        cpu[key] = None
    page = render_html(bare)
    parser = parse(page)
    assert "No quality gates were checked in this build." in page
    assert "Target: cpu" in parser.headings and "Pass timeline" in parser.headings
    assert not {"Latency", "Quality", "Listening: demo.wav"} & set(parser.headings)
    assert page.count("<svg") == 1  # the pass timeline only
    assert "data:audio" not in page and "data:image" not in page
    # gates without checks, and a report with almost nothing in it
    assert "No quality gates" in render_html({**bare, "gates": {"limits": {}, "checks": None}})
    parse(render_html({"targets": {"t": {"passes": [{"name": "p"}]}}}))
    parse(render_html({}))


def test_nan_and_missing_numbers_show_as_a_dash(report: dict) -> None:
    nan = float("nan")
    broken = copy.deepcopy(report)
    cpu = broken["targets"]["cpu"]
    cpu["speedup"] = nan
    cpu["speedup_10s"] = None
    cpu["quality_delta"]["si_sdr"] = nan
    cpu["quality"]["artifact"]["pesq"] = nan
    cpu["quality"]["noisy"]["si_sdr"] = -3.5  # a bar below the zero line, labelled under it
    cpu["latency_ms"]["1s"]["artifact"]["p99"] = nan
    cpu["passes"][0]["seconds"] = nan
    broken["gates"]["checks"]["cpu"][0]["delta"] = nan
    page = render_html(broken)
    parse(page)
    summary = re.search(r'<section id="summary">.*?</section>', page, re.DOTALL).group()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", summary)
    assert cells[1] == "—" and cells[2] == "—" and cells[6] == "—"
    assert cells[3] == f"{cpu['throughput_speedup']:.2f}"
    assert re.search(r"\bnan\b", page, re.IGNORECASE) is None
    assert '<td class="n">—</td>' in page and ">—</text>" in page  # tables and charts
    assert ">-3.500</text>" in page


def test_tolerant_profile_precision_streaming_and_gpu_sections(report: dict) -> None:
    rich = copy.deepcopy(report)
    cpu = rich["targets"]["cpu"]
    cpu["profile"] = {"rows": [{"name": "conv.1", "share": 0.3, "ms": 3.0, "gflops": 12.5},
                               {"name": "gru<x>", "share": 0.25},
                               {"name": "tail", "share": 0.2}, {"share": 0.1}, "junk",
                               {"name": "zero", "share": None}]}
    cpu["precision"] = {"shipped": "int8", "layers_fp32": [{"name": "/in/Conv"}],
                        "fidelity_db": None, "layout": {"reduce_range": True}}
    cpu["streaming"] = {"hop": 256, "states": None, "latency": {"per_hop_ms": {"p50": 0.5}}}
    cpu["gpu"] = {"fp16_onnx": None, "tensorrt": {"skipped": "not installed"},
                  "measured": {"latency_ms": {"aoti": {"p50": 1.25, "p99": None}},
                               "throughput": {"aoti": {"1": {"rps": 80.0}}}}}
    page = render_html(rich)
    parser = parse(page)
    for heading in ("Precision", "Streaming", "GPU", "Profile: bottlenecks"):
        assert heading in parser.headings
    profile = page[page.index("Profile: bottlenecks"):page.index("Pass timeline")]
    # the fewest top rows adding to more than half the time: 30% + 25%
    assert "conv.1" in profile and "gru&lt;x&gt;" in profile and ">tail<" not in profile
    assert "55.0%" in profile and "12.50" in profile and "All fields" not in profile
    assert "Precision shipped: <b>int8</b>" in page and "/in/Conv" in page
    assert "Torch-TensorRT: not built: not installed." in page and "1.250" in page
    # rows given as a bare list with shares in percent
    cpu["profile"] = [{"name": "a", "share": 40.0}, {"name": "b", "share": 35.0},
                      {"name": "c", "share": 25.0}]
    profile = render_html(rich)
    assert "75.0%" in profile and ">c</td>" not in profile
    for value in ({"rows": "nonsense"}, {"rows": []}, [], "text", 3):
        cpu["profile"] = value
        assert "Profile: bottlenecks" not in render_html(rich)


# --- images, clip, writing -------------------------------------------------------------------


def test_png_encoder_round_trips_and_spectrogram_puts_low_frequencies_at_the_bottom() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    assert np.array_equal(read_png(encode_png(image)), image)
    t = np.arange(RATE) / RATE
    for frequency, half in ((500.0, "bottom"), (7000.0, "top")):
        db = spectrogram_db(np.sin(2 * np.pi * frequency * t).astype(np.float32))
        rgb = spectrogram_rgb(db, float(db.max()))
        brightest = int(np.argmax(rgb.astype(int).sum(axis=2).mean(axis=1)))
        expected_row = db.shape[0] - 1 - round(frequency / (RATE / N_FFT))
        assert abs(brightest - expected_row) <= 1, (frequency, brightest, expected_row)
        assert (brightest > db.shape[0] / 2) == (half == "bottom")
    assert tuple(rgb[0, 0]) == tuple(VIRIDIS[0])  # 80 dB below the peak: the darkest colour
    with pytest.raises(ValueError, match="height, width, 3"):
        encode_png(np.zeros((2, 2), np.uint8))


def test_report_clip_checks_its_arrays() -> None:
    one = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="sample_rate"):
        ReportClip("c", 0, one, one)
    with pytest.raises(ValueError, match="'noisy input' must be a non-empty 1-D array"):
        ReportClip("c", RATE, np.zeros((1, 100), np.float32), one)
    with pytest.raises(ValueError, match="'x artifact'"):
        ReportClip("c", RATE, one, one, {"x": np.zeros(0, np.float32)})
    # NaN output (a broken artifact) still renders: silence in the player, dark spectrogram
    broken = ReportClip("c", RATE, one, one, {"x": np.full(100, np.nan, np.float32)})
    parse(render_html({"targets": {}}, broken))


def test_write_is_atomic(report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    assert write_html_report(report, path) == path
    assert path.read_text(encoding="utf-8") == render_html(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert path.stat().st_mode & 0o777 == 0o644
    before = path.read_text(encoding="utf-8")

    def fail(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_html_report({"targets": {}}, path)
    assert path.read_text(encoding="utf-8") == before  # the old page is intact, no temp left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# --- rendering in Chromium ---------------------------------------------------------------


@requires_chromium
def test_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    """Negative control: a page with a console.error and an uncaught exception must be caught by
    the same check the report is held to."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>b</title></head>'
                    '<body><p>broken</p><script>console.error("deliberate failure");'
                    "undefinedFunction();</script></body></html>")
    code, stderr = run_chromium(page, tmp_path / "broken.png", tmp_path)
    assert code == 0 and (tmp_path / "broken.png").is_file()
    errors = console_errors(stderr)
    assert any("deliberate failure" in line for line in errors), stderr[-2000:]
    assert any("Uncaught ReferenceError" in line for line in errors), stderr[-2000:]


@requires_chromium
def test_report_renders_in_chromium(build: tuple[dict[str, Any], Path],
                                    tmp_path: Path) -> None:
    """The page the build itself wrote (OUT/report.html: its clip is the demo pair through the
    fp32 PyTorch model and the cpu artifact) renders with no console error."""
    page = build[1] / "report.html"
    assert "Listening" in page.read_text()
    shot = tmp_path / "shot.png"
    code, stderr = run_chromium(page, shot, tmp_path)
    assert code == 0, stderr[-2000:]
    assert console_errors(stderr) == [], console_errors(stderr)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 4000)
    shutil.copyfile(shot, SHOT)
    pixels = read_png(data)[:, :, :3].reshape(-1, 3).astype(np.int64)
    packed, counts = np.unique(pixels @ np.array([1 << 16, 1 << 8, 1]), return_counts=True)
    assert len(packed) > 1000, "the screenshot is (nearly) blank"
    white = counts[packed == 0xFFFFFF].sum()
    assert white < 0.95 * len(pixels), "the screenshot is (nearly) all white"
    colour = dict(zip(packed.tolist(), counts.tolist(), strict=True))
    assert colour.get(0x2F6DB5, 0) > 2000 and colour.get(0xE07B39, 0) > 2000, "chart bars"
    # spectrogram pixels: colours within a few levels of the viridis table
    rgb = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1)
    distance = np.abs(rgb[:, None, :] - VIRIDIS[None, :, :].astype(np.int64)).max(axis=2).min(1)
    on_viridis = counts[(distance <= 4) & (rgb.sum(axis=1) < 600)].sum()
    assert on_viridis > 100_000, f"only {on_viridis} spectrogram pixels on screen"
