"""Regenerate the project's demo audio: ``models/demo_audio/{noisy,clean}/demo.wav``.

``python -m models.make_demo`` synthesises a sentence with espeak-ng, adds synthetic noise
(pink noise, babble-like noise and a little mains hum) at 5 dB SNR and writes both files as
16 kHz mono 16-bit PCM. The output is deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from calibration.synthetic import SAMPLE_RATE, espeak_speech, make_noise, mix_at_snr
from models.registry import DEMO_DIR

TEXT = "Please call Stella and ask her to bring these things with her from the store."
SNR_DB = 5.0
SEED = 2024


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


if __name__ == "__main__":
    main()
