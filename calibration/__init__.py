"""Audio data: readers, datasets, synthetic mixtures, quality metrics."""
