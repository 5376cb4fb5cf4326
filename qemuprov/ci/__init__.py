"""Sharing builds between machines: the binary cache (an OCI registry), signatures, runtime images."""
