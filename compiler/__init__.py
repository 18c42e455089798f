"""secompile's core: artifacts, passes, the pass manager, pipelines, cache, reports, CLI."""
