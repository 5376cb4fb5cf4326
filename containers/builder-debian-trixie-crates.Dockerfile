# Builder for the Rust virtiofsd without a crates registry: cargo, and the crates virtiofsd depends on as
# Debian 13 packages them (librust-*-dev under /usr/share/cargo/registry, listed by `apt-get build-dep`).
# Recipes use it with [virtiofsd] crates = "debian". The base is a build argument so users can pick another.
ARG BASE=debian:trixie
FROM ${BASE}
RUN if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
      sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources; \
    else \
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/qemuprov-src.list; \
    fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential git ca-certificates pkg-config cargo rustc libseccomp-dev libcap-ng-dev \
 && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y --no-install-recommends rust-virtiofsd \
 && rm -rf /var/lib/apt/lists/*
# CAs this host trusts beyond the distribution's (a TLS-inspecting proxy's): qemuprov hands them over as host-ca/
# in the build context, so that pip, git and cargo here trust what the host trusts. Builder images stay local.
COPY host-ca/ /usr/local/share/ca-certificates/qemuprov-host/
RUN update-ca-certificates >/dev/null 2>&1
