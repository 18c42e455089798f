"""Spreading work: the Ray executor (the serial one is in ``core``) and the quality scoring of
evaluation files that it spreads."""
