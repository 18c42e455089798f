"""Audio quality metrics: SI-SDR (our own, it is one formula), PESQ-WB (``pesq``), ESTOI
(``pystoi``), and input-SNR buckets for per-condition reporting."""

from __future__ import annotations

import numpy as np

from secompile.calibration.audio import resample

SNR_BUCKETS = ((-np.inf, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, np.inf))


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019)."""
    est = estimate.astype(np.float64) - np.mean(estimate)
    ref = reference.astype(np.float64) - np.mean(reference)
    target = (np.dot(est, ref) / (np.dot(ref, ref) + 1e-12)) * ref
    noise = est - target
    return float(10 * np.log10((np.dot(target, target) + 1e-12) / (np.dot(noise, noise) + 1e-12)))


def snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    """SNR of a noisy signal against its clean reference, in dB."""
    noise = noisy.astype(np.float64) - clean
    return float(10 * np.log10((np.dot(clean, clean) + 1e-12) / (np.dot(noise, noise) + 1e-12)))


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz; NaN when PESQ finds no utterance."""
    from pesq import PesqError, pesq

    ref, est = resample(reference, sample_rate, 16000), resample(estimate, sample_rate, 16000)
    try:
        return float(pesq(16000, ref.astype(np.float64), est.astype(np.float64), "wb"))
    except PesqError:
        return float("nan")


def estoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Extended short-time objective intelligibility (Jensen & Taal, 2016); NaN for clips too
    short to score (pystoi needs 30 frames of speech and answers 1e-5 or fails below that)."""
    import warnings

    from pystoi import stoi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = float(stoi(reference, estimate, sample_rate, extended=True))
    except (ValueError, IndexError, np.exceptions.AxisError):
        return float("nan")
    return float("nan") if score == 1e-5 else score


def quality(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> dict[str, float]:
    """SI-SDR, PESQ-WB and ESTOI of one enhanced clip."""
    n = min(len(estimate), len(reference))
    est, ref = estimate[:n], reference[:n]
    return {
        "si_sdr": si_sdr(est, ref),
        "pesq": pesq_wb(est, ref, sample_rate),
        "stoi": estoi(est, ref, sample_rate),
    }


def bucket_name(snr: float) -> str:
    """Label of the input-SNR bucket ``snr`` falls in, e.g. ``5-10dB``."""
    for low, high in SNR_BUCKETS:
        if low <= snr < high:
            if low == -np.inf:
                return f"<{high:g}dB"
            return f">={low:g}dB" if high == np.inf else f"{low:g}-{high:g}dB"
    raise ValueError(snr)


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over rows, ignoring NaN."""
    keys = rows[0].keys() if rows else ()
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
