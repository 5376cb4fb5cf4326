"""The build pipeline, from recipe to installed prefix, and its phases."""
