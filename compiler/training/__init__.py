"""The fine-tuning ``prune`` and ``distill`` share: their training options, data, the run
inside a pass and its before/after report (the loop itself is ``models.distillation``)."""
