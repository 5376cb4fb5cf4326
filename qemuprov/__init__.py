"""qemuprov: QEMU + virtiofsd for virtio-fs work, built from recipes, installed onto PATH, probed."""

__version__ = "0.1.0"
