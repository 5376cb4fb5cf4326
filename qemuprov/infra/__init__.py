"""Plumbing every layer stands on: paths, child processes, progress, rendering, settings, container engines and the
runners that run build steps."""
