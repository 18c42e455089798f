"""secompile's compiler, one subpackage per concept.

* ``core``: what flows and what runs it: ``Artifact``, ``Pass``/``PassConfig``/``PassResult``,
  the pass registry, ``PassContext``, ``PassManager``, ``PipelineSpec``, the cache,
  instruments, executors (the serial one), progress, versions and the typed errors. It imports
  nothing else of the project.
* ``runtime``: running artifacts: ONNX Runtime and torch runners, timing, the fresh-process
  memory probe, the parity verifier, the batching server, streaming sessions, GPU timing.
* ``lowering``: leaving torch: the TorchScript ONNX export and its clean-up, ``torch.export``
  programs with opaque RNN operators.
* ``analysis``: reading a model: its ``torch.export`` graph, channel groups, pruning
  importance and selection, the cost model (MACs, FLOPs, bytes) and the profiler.
* ``quantization``: INT8 planning on ONNX graphs and the GRU lowering ORT lacks.
* ``training``: the fine-tuning ``prune`` and ``distill`` run (the loop is in ``models``).
* ``reporting``: report, Markdown, HTML, JUnit, quality gates, report comparison.
* ``distributed``: the Ray executor and the quality scoring it spreads.
* ``app``: the application on top: the build, fleets, the serving benchmark, the CLI and the
  Python API (re-exported as ``secompile``).
"""
