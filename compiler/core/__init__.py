"""The pass-manager core: artifact, pass base, registry, context, manager, pipeline, cache,
instruments, executor, progress, versions, errors. Imports nothing else of the project."""
