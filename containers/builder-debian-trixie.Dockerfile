# Builder for QEMU trees of the Debian trixie era. The base is a build argument so users can pick another.
ARG BASE=debian:trixie
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential git ca-certificates ninja-build meson pkg-config python3 python3-venv flex bison ccache clang \
      libglib2.0-dev libpixman-1-dev libseccomp-dev libcap-ng-dev zlib1g-dev libfdt-dev libslirp-dev libaio-dev bzip2 cargo rustc \
 && rm -rf /var/lib/apt/lists/*
# CAs this host trusts beyond the distribution's (a TLS-inspecting proxy's): qemuprov hands them over as host-ca/
# in the build context, so that pip, git and cargo here trust what the host trusts. Builder images stay local.
COPY host-ca/ /usr/local/share/ca-certificates/qemuprov-host/
RUN update-ca-certificates >/dev/null 2>&1
# QEMU compiles with clang here: 13% less compile time than gcc (benchmarks/results/build_levers.txt). A recipe's
# --cc=gcc still picks gcc, so ccache's masquerade directory wraps every name configure may call.
ENV CC=clang CXX=clang++
RUN for name in cc c++ clang clang++; do ln -sf ../../bin/ccache /usr/lib/ccache/$name; done
# QEMU 8.1+ trees without a bundled meson wheel (distribution trees) need meson >= 1.5: configure is given
# --python=/opt/qemuprov/python/bin/python3, whose venv configure's own venv inherits.
RUN python3 -m venv /opt/qemuprov/python \
 && /opt/qemuprov/python/bin/pip install --no-cache-dir -q 'meson>=1.5' distlib
