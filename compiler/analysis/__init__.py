"""Reading a model: its ``torch.export`` graph, channel groups and their removal, pruning
importance and selection, the cost model (MACs, FLOPs, bytes per layer) and the profiler."""
