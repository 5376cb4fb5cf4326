# Builder for QEMU trees of the Debian bookworm era. The base is a build argument so users can pick another.
ARG BASE=debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential git ca-certificates ninja-build meson pkg-config python3 python3-venv flex bison ccache \
      libglib2.0-dev libpixman-1-dev libseccomp-dev libcap-ng-dev zlib1g-dev libfdt-dev bzip2 \
 && rm -rf /var/lib/apt/lists/*
# QEMU's configure calls plain cc: ccache's masquerade directory needs cc and c++ as well.
RUN ln -sf ../../bin/ccache /usr/lib/ccache/cc && ln -sf ../../bin/ccache /usr/lib/ccache/c++
# QEMU 8.1+ trees without a bundled meson wheel (distribution trees) need meson >= 1.5: configure is given
# --python=/opt/qemuprov/python/bin/python3, whose venv configure's own venv inherits.
RUN python3 -m venv /opt/qemuprov/python \
 && /opt/qemuprov/python/bin/pip install --no-cache-dir -q 'meson>=1.5' distlib
