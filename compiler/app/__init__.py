"""The application: one build (plan, data, run, report, commit), fleets, the serving
benchmark, the ``secompile`` command line and the Python API."""
