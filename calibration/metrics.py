"""Audio quality metrics: SI-SDR (our own, it is one formula), PESQ-WB (``pesq``), ESTOI
(``pystoi``), and input-SNR buckets for per-condition reporting.

Rules for real recordings:

* a *silent* signal (every sample within one 16-bit step of zero, :func:`is_silent`) is no
  reference: intrusive metrics against it mean nothing, so callers skip such pairs
  (``compiler.distributed.scoring.score_pair``) instead of averaging noise into the result;
* a silent *estimate* of a real reference is the worst output there is: PESQ-WB gives it
  :data:`PESQ_WB_FLOOR` (the ``pesq`` package would divide by zero and fail);
* PESQ and ESTOI are defined for utterances, not hours: the ``pesq`` package crashes the
  process (segmentation fault, measured at 4 minutes) and ESTOI's memory grows with the length,
  so a clip longer than 1.5 x :data:`SEGMENT_SECONDS` is scored in equal segments of about
  :data:`SEGMENT_SECONDS` and the segments' scores averaged, weighted by length. SI-SDR is
  computed over the whole clip.
"""

from __future__ import annotations

import math
import warnings
from itertools import pairwise

import numpy as np

from secompile.calibration.audio import resample

SNR_BUCKETS = ((-np.inf, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, np.inf))
SILENCE_PEAK = 2.0 ** -15  # one step of 16-bit PCM
SEGMENT_SECONDS = 30.0
# P.862.2's mapping of the lowest raw PESQ score (-0.5) to MOS-LQO: what silence scores
PESQ_WB_FLOOR = 0.999 + 4.0 / (1.0 + math.exp(-1.3669 * -0.5 + 3.8224))


def is_silent(wav: np.ndarray) -> bool:
    """Whether ``wav`` holds no signal: every sample within one 16-bit PCM step of zero."""
    return wav.size == 0 or float(np.max(np.abs(wav))) <= SILENCE_PEAK


def segments(length: int, sample_rate: int) -> list[slice]:
    """``length`` samples cut into equal segments of about :data:`SEGMENT_SECONDS` (one segment
    up to 1.5 times that): how PESQ and ESTOI score long clips."""
    count = max(1, int(length / (SEGMENT_SECONDS * sample_rate) + 0.5))
    bounds = np.linspace(0, length, count + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]


def _segmented(metric, estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """``metric(est, ref, rate)`` over :func:`segments`, length-weighted mean of the segments
    that scored (NaN when none did)."""
    parts = segments(len(reference), sample_rate)
    if len(parts) == 1:
        return metric(estimate, reference, sample_rate)
    scores = [(metric(estimate[s], reference[s], sample_rate), s.stop - s.start) for s in parts]
    scored = [(v, n) for v, n in scores if not np.isnan(v)]
    if not scored:
        return float("nan")
    return float(sum(v * n for v, n in scored) / sum(n for _, n in scored))


BLOCK = 1 << 20  # samples per float64 block of SI-SDR and SNR on long clips


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).

    Clips over :data:`BLOCK` samples are summed block by block, so the float64 working copies
    stay a few MB however long the clip (a 10-minute clip would need four of 77 MB each)."""
    if len(reference) > BLOCK:
        return _si_sdr_blocks(estimate, reference)
    est = estimate.astype(np.float64) - np.mean(estimate)
    ref = reference.astype(np.float64) - np.mean(reference)
    target = (np.dot(est, ref) / (np.dot(ref, ref) + 1e-12)) * ref
    noise = est - target
    return float(10 * np.log10((np.dot(target, target) + 1e-12) / (np.dot(noise, noise) + 1e-12)))


def _blocks(*arrays: np.ndarray):
    for start in range(0, len(arrays[0]), BLOCK):
        yield tuple(a[start:start + BLOCK].astype(np.float64) for a in arrays)


def _si_sdr_blocks(estimate: np.ndarray, reference: np.ndarray) -> float:
    est_mean = np.mean(estimate, dtype=np.float64)
    ref_mean = np.mean(reference, dtype=np.float64)
    cross = energy = 0.0
    for est, ref in _blocks(estimate, reference):
        cross += float(np.dot(est - est_mean, ref - ref_mean))
        energy += float(np.dot(ref - ref_mean, ref - ref_mean))
    scale = cross / (energy + 1e-12)
    target = scale * scale * energy
    noise = 0.0
    for est, ref in _blocks(estimate, reference):
        residual = (est - est_mean) - scale * (ref - ref_mean)
        noise += float(np.dot(residual, residual))
    return float(10 * np.log10((target + 1e-12) / (noise + 1e-12)))


def snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    """SNR of a noisy signal against its clean reference, in dB (block by block on long clips,
    as :func:`si_sdr`)."""
    if len(clean) > BLOCK:
        signal = noise = 0.0
        for noisy_block, clean_block in _blocks(noisy, clean):
            signal += float(np.dot(clean_block, clean_block))
            noise += float(np.dot(noisy_block - clean_block, noisy_block - clean_block))
        return float(10 * np.log10((signal + 1e-12) / (noise + 1e-12)))
    noise = noisy.astype(np.float64) - clean
    return float(10 * np.log10((np.dot(clean, clean) + 1e-12) / (np.dot(noise, noise) + 1e-12)))


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz; NaN when PESQ finds no utterance (or the
    reference is silent), :data:`PESQ_WB_FLOOR` for a silent estimate of a real reference;
    long clips are scored in segments (see the module docstring)."""
    return _segmented(_pesq_wb, estimate, reference, sample_rate)


def _pesq_wb(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    from pesq import PesqError, pesq

    if is_silent(reference):
        return float("nan")
    if is_silent(estimate):
        return PESQ_WB_FLOOR
    ref, est = resample(reference, sample_rate, 16000), resample(estimate, sample_rate, 16000)
    try:
        return float(pesq(16000, ref.astype(np.float64), est.astype(np.float64), "wb"))
    except PesqError:
        return float("nan")


def estoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Extended short-time objective intelligibility (Jensen & Taal, 2016); NaN for clips too
    short to score (pystoi needs 30 frames of speech and answers 1e-5 or fails below that) and
    for a silent reference; long clips are scored in segments (see the module docstring)."""
    return _segmented(_estoi, estimate, reference, sample_rate)


def _estoi(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    from pystoi import stoi

    if is_silent(reference):
        return float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = float(stoi(reference, estimate, sample_rate, extended=True))
    except (ValueError, IndexError, np.exceptions.AxisError):
        return float("nan")
    return float("nan") if score == 1e-5 or np.isnan(score) else score


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
    """Per-metric mean over rows, ignoring NaN (NaN, without a warning, where every row is)."""
    keys = rows[0].keys() if rows else ()
    out = {}
    for k in keys:
        values = np.asarray([r[k] for r in rows], np.float64)
        out[k] = float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else (
            float("nan"))
    return out
