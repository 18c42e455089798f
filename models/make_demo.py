"""Regenerate the project's demo audio: ``models/demo_audio/{noisy,clean}/demo.wav`` and the
default calibration set ``models/demo_audio/calib/*.wav``.

``python -m models.make_demo`` synthesises a sentence with espeak-ng, adds synthetic noise
(pink noise, babble-like noise and a little mains hum) at 5 dB SNR and writes both files as
16 kHz mono 16-bit PCM. The calibration set is :data:`CALIB_CLIPS` noisy mixtures of other
espeak-ng utterances and noises at SNRs from -5 to 20 dB (``SyntheticMixtures``); it is what
``quantize`` calibrates on when a build gives no ``--calib`` folder, and it never overlaps the
demo pair. The output is deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from secompile.calibration.synthetic import (
    SAMPLE_RATE,
    SyntheticMixtures,
    espeak_corpus,
    espeak_speech,
    make_noise,
    mix_at_snr,
)
from secompile.models.registry import DEMO_DIR

TEXT = "Please call Stella and ask her to bring these things with her from the store."
SNR_DB = 5.0
SEED = 2024
CALIB_CLIPS = 8
CALIB_SECONDS = 3.0


def make_demo(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The demo pair ``(noisy, clean)``, float32, 16 kHz, between 3 and 6 seconds long."""
    speech = espeak_speech(TEXT, voice="en-us+f3", rate_wpm=170, pitch=55)
    pad = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    clean = np.concatenate([pad, speech, pad])
    rng = np.random.default_rng(seed)
    n = clean.size
    noise = (
        make_noise("pink", n, SAMPLE_RATE, rng)
        + 0.7 * make_noise("babble", n, SAMPLE_RATE, rng)
        + 0.2 * make_noise("hum", n, SAMPLE_RATE, rng)
    )
    noisy, clean = mix_at_snr(clean, noise, SNR_DB)
    gain = 0.5 / float(np.max(np.abs(noisy)))  # peak at -6 dBFS
    return noisy * gain, clean * gain


def make_calibration(seed: int = SEED) -> list[np.ndarray]:
    """:data:`CALIB_CLIPS` noisy calibration clips of :data:`CALIB_SECONDS`, float32, 16 kHz,
    at SNRs spread evenly over -5..20 dB."""
    speech = espeak_corpus(24, seed=seed + 1)
    snrs = np.linspace(-5.0, 20.0, CALIB_CLIPS)
    clips = []
    for index, snr in enumerate(snrs):
        mixtures = SyntheticMixtures(speech, int(CALIB_SECONDS * SAMPLE_RATE), seed=seed + 2,
                                     snr_choices=[float(snr)])
        clips.append(mixtures.pair(index)[0])
    return clips


def main(argv: list[str] | None = None) -> None:
    """Write the demo pair (``--out-dir`` defaults to ``models/demo_audio``)."""
    parser = argparse.ArgumentParser(prog="python -m models.make_demo", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=DEMO_DIR)
    args = parser.parse_args(argv)
    noisy, clean = make_demo()
    for kind, audio in (("noisy", noisy), ("clean", clean)):
        (args.out_dir / kind).mkdir(parents=True, exist_ok=True)
        sf.write(args.out_dir / kind / "demo.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {args.out_dir}/noisy/demo.wav and clean/demo.wav "
          f"({noisy.size / SAMPLE_RATE:.2f} s, {SNR_DB:.0f} dB SNR)")
    calib = args.out_dir / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for index, clip in enumerate(make_calibration()):
        sf.write(calib / f"calib_{index:02d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {CALIB_CLIPS} calibration clips to {calib}")


if __name__ == "__main__":
    main()
