"""Synthetic noisy/clean speech mixtures: the project's own data, generated, never downloaded.

Three layers, usable separately:

* :func:`espeak_speech` synthesises a clean utterance with the ``espeak-ng`` command-line
  program; :func:`espeak_corpus` builds a varied corpus of them (several English voices and
  voice variants, speaking rates and pitches, fixed and randomly composed sentences).
* :func:`make_noise` draws one of several noise kinds (:data:`NOISE_KINDS`): coloured
  stationary noises, babble, mains hum, tones, band-limited modulated noise, clicks.
* :func:`mix_at_snr` mixes speech and noise at a given signal-to-noise ratio, and
  :class:`SyntheticMixtures` turns a list of utterances into a deterministic, indexable stream
  of fixed-length ``(noisy, clean)`` pairs at random SNRs and levels.

Everything is plain NumPy/SciPy and float32; every random choice comes from a
:class:`numpy.random.Generator`, so a seed fixes the data exactly.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from secompile.calibration.audio import resample

SAMPLE_RATE = 16000

NOISE_KINDS: tuple[str, ...] = (
    "white",
    "pink",
    "brown",
    "colored",
    "babble",
    "hum",
    "tonal",
    "modulated",
    "clicks",
)
"""Noise kinds understood by :func:`make_noise`."""

ESPEAK_VOICES: tuple[str, ...] = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
"""English espeak-ng voices used by :func:`espeak_corpus`."""

ESPEAK_VARIANTS: tuple[str, ...] = (
    "",
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "adam", "linda", "john", "paul", "robert", "steph", "david", "annie", "grandpa",
)
"""espeak-ng voice variants (``voice+variant``); ``""`` is the voice's own default."""

SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "The rainbow is a division of white light into many beautiful colours.",
    "Our train leaves the station at a quarter past nine tomorrow morning.",
    "Could you tell me the way to the nearest post office, please?",
    "I would like a cup of tea with milk and no sugar.",
    "The weather forecast says it will rain all afternoon in the north.",
    "Remember to switch off the lights before you leave the building.",
    "He answered every question without looking at his notes.",
    "The museum opens at ten and closes early on Sundays.",
    "A large crowd gathered outside the theatre to see the actors arrive.",
    "Do you think the meeting will finish before lunch?",
    "My brother repaired the old bicycle in less than an hour.",
    "They walked slowly along the beach as the tide came in.",
    "Thank you very much for your help with the project last week.",
    "The children were laughing and playing in the garden all day.",
    "It is important to drink enough water when the weather is hot.",
    "The new library has thousands of books and a quiet reading room.",
    "Turn left at the traffic lights and the hotel is on your right.",
    "Yesterday the football team won their match by two goals.",
    "She played the piano beautifully at the concert on Friday night.",
    "How many people are coming to dinner this evening?",
    "The scientist explained her results to a room full of students.",
    "Heavy snow closed several roads in the mountains overnight.",
    "Would you mind opening the window a little? It is very warm in here.",
    "The price of fresh vegetables went up again this month.",
    "Seven hundred and forty two kilometres separate the two cities.",
    "Speak clearly into the microphone so that everyone can hear you.",
    "A gentle breeze moved the leaves of the tall oak trees.",
    "Where did you put the keys to the car?",
    "Our neighbours are building a wooden fence around their garden.",
    "The doctor said I should rest for a few days.",
    "Nobody expected the river to rise so quickly after the storm.",
    "Good morning everyone, and welcome to the annual general meeting.",
    "Fish and chips are a popular meal by the seaside.",
    "The clock on the church tower struck midnight.",
)
"""Built-in English sentences for :func:`espeak_corpus`."""

_VOCABULARY = """time person year way day thing man world life hand part child eye woman place work week
    case point number group problem fact water money story month lot right study book job word
    business issue side kind head house service friend father power hour game line end member
    law car city community name president team minute idea kid body information back parent
    face others level office door health art war history party result change morning reason
    research girl guy moment air teacher force education foot boy age policy music market sense
    nation plan college interest death experience effect class control care field development
    role effort rate heart drug show leader light voice wife police mind price report decision
    son view relationship town road arm difference value building action model season society
    tax director position player record paper space ground form event official matter center
    couple site project activity star table need court oil situation cost industry figure street
    image phone data picture practice piece land product doctor wall patient worker news test
    movie north love support technology step baby computer type attention film tree source
    organization hair window evidence population site garden bird river summer kitchen bread
    go make take see come think look want give use find tell ask seem feel try leave call keep
    let begin help talk turn start show hear play run move like live believe hold bring happen
    write provide sit stand lose pay meet include continue set learn lead understand watch follow
    stop create speak read allow add spend grow open walk win offer remember consider appear buy
    wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell
    good new first last long great little own other old right big high different small large
    next early young important few public bad same able late hard major better economic strong
    possible whole free military true federal international full special easy clear recent
    certain personal open red difficult available likely short single medical current wrong
    quickly slowly never always often really almost quite very still again together already
    the a an and but or because if when while after before with without from into over under"""
_WORDS: tuple[str, ...] = tuple(_VOCABULARY.split())


# --------------------------------------------------------------------------------------------
# speech


def espeak_speech(
    text: str,
    *,
    voice: str = "en",
    rate_wpm: int = 160,
    pitch: int = 50,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng and return float32 mono audio at ``sample_rate``.

    ``voice`` is an espeak-ng voice name, optionally with a variant (``"en-us+f3"``),
    ``rate_wpm`` the speaking rate in words per minute and ``pitch`` espeak's 0-99 pitch.
    Raises :class:`RuntimeError` if the ``espeak-ng`` program is not installed or fails.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not installed (or not on PATH); it is needed to synthesise speech "
            "(e.g. `apt-get install espeak-ng`)"
        )
    cmd = [exe, "--stdout", "-v", voice, "-s", str(int(rate_wpm)), "-p", str(int(pitch)), text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} (exit {proc.returncode}): {err}")
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    audio = resample(audio, int(rate), sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def random_sentence(rng: np.random.Generator, n_words: tuple[int, int] = (5, 14)) -> str:
    """A random word string from a built-in vocabulary (phonetic variety, not grammar)."""
    n = int(rng.integers(n_words[0], n_words[1] + 1))
    words = [str(w) for w in rng.choice(_WORDS, size=n)]
    # A comma now and then gives espeak a phrase boundary (a pause and a pitch reset).
    for i in range(2, n - 2):
        if rng.random() < 0.08:
            words[i] += ","
    return " ".join(words).capitalize() + "."


def _trim_silence(audio: np.ndarray, sample_rate: int, pad_s: float = 0.05) -> np.ndarray:
    """Drop leading/trailing near-silence (below -50 dB of the peak), keeping ``pad_s``."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio
    idx = np.flatnonzero(np.abs(audio) > peak * 10 ** (-50 / 20))
    pad = int(pad_s * sample_rate)
    return audio[max(idx[0] - pad, 0) : idx[-1] + pad + 1]


def espeak_corpus(
    n_utterances: int,
    *,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    voices: Sequence[str] = ESPEAK_VOICES,
    variants: Sequence[str] = ESPEAK_VARIANTS,
    rate_wpm: tuple[int, int] = (120, 210),
    pitch: tuple[int, int] = (15, 85),
    random_text_fraction: float = 0.5,
) -> list[np.ndarray]:
    """Build ``n_utterances`` varied espeak-ng utterances, deterministic for ``seed``.

    Each utterance draws a voice and a variant, a speaking rate and a pitch uniformly from the
    given ranges, and either a built-in sentence (:data:`SENTENCES`) or, with probability
    ``random_text_fraction``, a random word string. Utterances are trimmed of leading and
    trailing silence, DC-free and normalised to unit peak.
    """
    rng = np.random.default_rng(seed)
    corpus: list[np.ndarray] = []
    for _ in range(n_utterances):
        voice = str(rng.choice(voices))
        variant = str(rng.choice(variants))
        name = f"{voice}+{variant}" if variant else voice
        if rng.random() < random_text_fraction:
            text = random_sentence(rng)
        else:
            text = str(rng.choice(SENTENCES))
        audio = espeak_speech(
            text,
            voice=name,
            rate_wpm=int(rng.integers(rate_wpm[0], rate_wpm[1] + 1)),
            pitch=int(rng.integers(pitch[0], pitch[1] + 1)),
            sample_rate=sample_rate,
        )
        audio = _trim_silence(audio - audio.mean(), sample_rate)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 0.0:
            corpus.append((audio / peak).astype(np.float32))
    return corpus


# --------------------------------------------------------------------------------------------
# noise


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x / rms if rms > 0 else x).astype(np.float32)


def _shaped_noise(n: int, rng: np.random.Generator, gain: np.ndarray | None = None,
                  exponent: float = 0.0) -> np.ndarray:
    """White Gaussian noise shaped in the frequency domain by ``|f|^-exponent/2`` and ``gain``.

    ``gain`` (optional) is an amplitude response sampled on the ``n // 2 + 1`` rfft bins.
    """
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spec.size, dtype=np.float64)
    k[0] = 1.0
    spec *= k ** (-exponent / 2)
    spec[0] = 0.0
    if gain is not None:
        spec *= gain
    return np.fft.irfft(spec, n)


def _smooth_envelope(n: int, sample_rate: int, rng: np.random.Generator,
                     rate_hz: float) -> np.ndarray:
    """A positive random envelope varying at roughly ``rate_hz`` (low-passed noise), mean ~1."""
    hop = max(int(sample_rate / (4 * rate_hz)), 1)
    n_points = n // hop + 4
    points = np.cumsum(rng.standard_normal(n_points)) * 0.3 + rng.standard_normal(n_points)
    env = np.interp(np.arange(n) / hop, np.arange(n_points), points)
    env = np.exp(env - env.mean())
    return env / env.mean()


def _bandpass(x: np.ndarray, low: float, high: float, sample_rate: int) -> np.ndarray:
    nyq = sample_rate / 2
    low = min(max(low, 20.0), nyq * 0.9)
    high = min(max(high, low * 1.2), nyq * 0.98)
    from scipy import signal  # here: scipy.signal costs ~1 s of import for every CLI call

    sos = signal.butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return signal.sosfilt(sos, x)


def _speech_excerpt(speech: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of back-to-back random utterances, starting at a random offset."""
    parts, total = [], 0
    while total < n + 1:
        utt = speech[int(rng.integers(len(speech)))]
        parts.append(utt)
        total += utt.size
    joined = np.concatenate(parts)
    start = int(rng.integers(0, joined.size - n + 1))
    return joined[start : start + n]


def make_noise(
    kind: str,
    n_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    *,
    speech: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Draw ``n_samples`` of noise of ``kind`` (one of :data:`NOISE_KINDS`), float32, unit RMS.

    Kinds:

    ``white``, ``pink``, ``brown``
        stationary Gaussian noise with a 0, -3 or -6 dB/octave slope.
    ``colored``
        stationary noise with a random smooth spectral shape (fans, cars, air conditioning).
    ``babble``
        3-8 overlapping talkers: excerpts of ``speech`` when given, otherwise speech-shaped
        noise with random syllable-rate envelopes.
    ``hum``
        mains hum (50 or 60 Hz) with random harmonics over a little broadband noise.
    ``tonal``
        a few drifting sine tones (whines, beeps) over a little broadband noise.
    ``modulated``
        band-limited noise under a slowly varying random envelope (passing traffic, wind).
    ``clicks``
        random short decaying bursts (keyboards, cutlery, doors) over quiet pink noise.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    n, sr = int(n_samples), int(sample_rate)
    t = np.arange(n) / sr
    if kind == "white":
        out = rng.standard_normal(n)
    elif kind == "pink":
        out = _shaped_noise(n, rng, exponent=1.0)
    elif kind == "brown":
        out = _shaped_noise(n, rng, exponent=2.0)
    elif kind == "colored":
        freqs = np.fft.rfftfreq(n, 1 / sr)
        anchors = np.geomspace(50.0, sr / 2, 10)
        shape_db = rng.uniform(-15.0, 15.0, anchors.size)
        tilt_db = rng.uniform(-6.0, 1.0) * np.log2(anchors / 500.0)
        gain_db = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(anchors), shape_db + tilt_db)
        out = _shaped_noise(n, rng, gain=10 ** (gain_db / 20))
    elif kind == "babble":
        talkers = int(rng.integers(3, 9))
        out = np.zeros(n)
        for _ in range(talkers):
            if speech:
                voice = _speech_excerpt(speech, n, rng).astype(np.float64)
            else:
                # Speech-like long-term spectrum (peak near 500 Hz) and a syllable-rate envelope.
                freqs = np.fft.rfftfreq(n, 1 / sr)
                gain = 1.0 / (1.0 + (freqs / 500.0) ** 2) * (freqs / (freqs + 100.0))
                env = _smooth_envelope(n, sr, rng, rate_hz=rng.uniform(3.0, 6.0)) ** 2
                voice = _shaped_noise(n, rng, gain=gain) * env
            out += _unit_rms(voice) * rng.uniform(0.5, 1.0)
    elif kind == "hum":
        f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        decay = rng.uniform(0.3, 1.5)
        out = np.zeros(n)
        for h in range(1, int(min(40, (sr / 2 - 100) // f0)) + 1):
            if h > 1 and rng.random() < 0.3:
                continue
            drift = 1.0 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t)
            out += h ** -decay * np.sin(2 * np.pi * f0 * h * t * drift + rng.uniform(0, 2 * np.pi))
        out = _unit_rms(out) + 0.05 * rng.standard_normal(n)
    elif kind == "tonal":
        out = np.zeros(n)
        for _ in range(int(rng.integers(1, 4))):
            f = rng.uniform(200.0, min(6000.0, sr / 2 - 200))
            vib = rng.uniform(0.0, 0.02) * np.sin(2 * np.pi * rng.uniform(0.1, 6.0) * t)
            phase = 2 * np.pi * np.cumsum(f * (1 + vib)) / sr
            gate = 1.0 if rng.random() < 0.5 else (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > 0)
            out += rng.uniform(0.3, 1.0) * np.sin(phase) * gate
        out = _unit_rms(out) + 0.05 * rng.standard_normal(n)
    elif kind == "modulated":
        low = float(np.exp(rng.uniform(np.log(50.0), np.log(2000.0))))
        high = low * float(np.exp(rng.uniform(np.log(2.0), np.log(16.0))))
        base = _bandpass(_shaped_noise(n, rng, exponent=rng.uniform(0.0, 1.5)), low, high, sr)
        out = base * _smooth_envelope(n, sr, rng, rate_hz=rng.uniform(0.2, 4.0))
    else:  # clicks
        out = 0.05 * _unit_rms(_shaped_noise(n, rng, exponent=1.0))
        n_clicks = max(1, int(rng.poisson(rng.uniform(1.0, 12.0) * n / sr)))
        for _ in range(n_clicks):
            dur = int(rng.uniform(0.001, 0.03) * sr)
            start = int(rng.integers(0, max(n - dur, 1)))
            burst = rng.standard_normal(dur) * np.exp(-np.arange(dur) / max(dur / 5, 1))
            if rng.random() < 0.5:
                burst = np.diff(burst, prepend=0.0)  # brighter click
            out[start : start + dur] += rng.uniform(0.2, 1.0) * burst[: n - start]
    return _unit_rms(np.asarray(out, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# mixing


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(
    clean: np.ndarray, noise: np.ndarray, snr_db: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mix ``clean`` and ``noise`` (same length) at ``snr_db``; return ``(noisy, clean)``.

    The noise is scaled so that ``10 log10(P_clean / P_noise) == snr_db`` (powers are means over
    the whole signal). If the mixture would leave ``[-1, 1]``, noisy and clean are scaled down
    together, which keeps the SNR. Both outputs are float32.
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if clean.shape != noise.shape or clean.ndim != 1:
        raise ValueError(f"clean and noise must be 1-D of equal length, got "
                         f"{clean.shape} and {noise.shape}")
    p_clean, p_noise = _power(clean), _power(noise)
    if p_clean == 0.0 or p_noise == 0.0:
        raise ValueError("clean and noise must both have non-zero power")
    noise = noise * np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    noisy = clean + noise
    peak = float(np.max(np.abs(noisy)))
    if peak > 1.0:
        noisy, clean = noisy / peak, clean / peak
    return noisy.astype(np.float32), clean.astype(np.float32)


@dataclass(frozen=True)
class SyntheticMixtures:
    """Deterministic, indexable stream of fixed-length ``(noisy, clean)`` float32 pairs.

    Pair ``i`` depends only on ``(seed, i)``, never on which pairs were drawn before, so a run
    can resume, skip or shard the stream and get identical data. For each pair:

    1. clean: utterances from ``speech`` placed back to back with random pauses (up to
       ``max_pause_s``) and randomly cropped to ``length`` samples; with probability
       ``eq_probability`` a gentle random spectral tilt is applied (a crude speaker/microphone
       variation);
    2. noise: one to ``max_noise_layers`` kinds from ``noise_kinds`` summed at random relative
       levels (babble uses ``speech`` itself);
    3. SNR: drawn from ``snr_choices`` when given, otherwise uniformly from ``snr_range``;
    4. level: the pair is scaled so the mixture's RMS is uniform in ``level_db`` (dBFS),
       then kept within ``[-1, 1]`` as in :func:`mix_at_snr`.
    """

    speech: Sequence[np.ndarray]
    length: int
    seed: int = 0
    snr_range: tuple[float, float] = (-5.0, 20.0)
    snr_choices: Sequence[float] | None = None
    noise_kinds: Sequence[str] = NOISE_KINDS
    sample_rate: int = SAMPLE_RATE
    level_db: tuple[float, float] = (-40.0, -15.0)
    max_noise_layers: int = 2
    max_pause_s: float = 0.6
    eq_probability: float = 0.5
    _kinds: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.speech:
            raise ValueError("speech must hold at least one utterance")
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")
        bad = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if bad or not self.noise_kinds:
            raise ValueError(f"noise_kinds must be a non-empty subset of {NOISE_KINDS}, got {bad}")
        if self.snr_choices is not None and len(self.snr_choices) == 0:
            raise ValueError("snr_choices, when given, must not be empty")
        if self.snr_range[0] > self.snr_range[1]:
            raise ValueError(f"snr_range must be (low, high), got {self.snr_range}")
        if self.max_noise_layers < 1:
            raise ValueError("max_noise_layers must be >= 1")
        object.__setattr__(self, "_kinds", tuple(self.noise_kinds))

    def _clean(self, rng: np.random.Generator) -> np.ndarray:
        parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0, self.max_pause_s) * self.sample_rate))]
        total = parts[0].size
        while total < self.length:
            utt = self.speech[int(rng.integers(len(self.speech)))]
            pause = np.zeros(int(rng.uniform(0.05, self.max_pause_s) * self.sample_rate))
            parts += [utt * rng.uniform(0.5, 1.0), pause]
            total += utt.size + pause.size
        joined = np.concatenate(parts).astype(np.float64)
        start = int(rng.integers(0, joined.size - self.length + 1))
        clean = joined[start : start + self.length]
        if rng.random() < self.eq_probability:
            # First-order tilt y[n] = x[n] + a (x[n] - x[n-1]): within about +-6 dB at 8 kHz.
            a = rng.uniform(-0.4, 0.4)
            from scipy import signal

            clean = signal.lfilter([1.0 + a, -a], [1.0], clean)
        if _power(clean) == 0.0:  # a crop of pure pause: put one utterance in
            utt = self.speech[int(rng.integers(len(self.speech)))][: self.length]
            clean = np.zeros(self.length)
            clean[: utt.size] = utt
        return clean

    def _noise(self, rng: np.random.Generator) -> np.ndarray:
        layers = int(rng.integers(1, self.max_noise_layers + 1))
        noise = np.zeros(self.length)
        for _ in range(layers):
            kind = self._kinds[int(rng.integers(len(self._kinds)))]
            part = make_noise(kind, self.length, self.sample_rate, rng, speech=self.speech)
            noise += part * 10 ** (rng.uniform(-10.0, 0.0) / 20)
        return noise

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``index``-th ``(noisy, clean)`` pair, each float32 of shape ``[length]``."""
        rng = np.random.default_rng([self.seed, int(index)])
        clean = self._clean(rng)
        noise = self._noise(rng)
        if self.snr_choices is not None:
            snr = float(self.snr_choices[int(rng.integers(len(self.snr_choices)))])
        else:
            snr = float(rng.uniform(*self.snr_range))
        noisy, clean = mix_at_snr(clean, noise, snr)
        level = 10 ** (rng.uniform(*self.level_db) / 20)
        gain = level / np.sqrt(_power(noisy))
        gain = min(gain, 0.99 / float(np.max(np.abs(noisy))))
        return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Pairs ``indices`` stacked: ``(noisy [B, length], clean [B, length])``."""
        pairs = [self.pair(i) for i in indices]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless consecutive batches: pairs ``start .. start + batch_size - 1``, then onwards."""
        i = start
        while True:
            yield self.batch(range(i, i + batch_size))
            i += batch_size
