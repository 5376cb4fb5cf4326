"""Proving an install works: guest boots over virtio-fs with the guest kit."""
