"""Whether this host is ready for virtio-fs and for building (qemuprov doctor)."""
