# Builder for the Rust virtiofsd 1.14 and later without a crates registry: cargo, and the crates virtiofsd depends
# on as Debian sid packages them (librust-*-dev under /usr/share/cargo/registry; librust-virtiofsd-dev pulls in
# every one of them). Debian 13's crates are too old for virtiofsd 1.14 (vhost 0.17, with the shared memory
# protocol qemuprov's DAX patch uses). sid's Release file may be weeks old on a mirror: apt is told not to mind.
# Recipes use it with [virtiofsd] crates = "debian". The base is a build argument so users can pick another.
ARG BASE=debian:sid
FROM ${BASE}
RUN printf 'Acquire::Check-Valid-Until "false";\n' > /etc/apt/apt.conf.d/99qemuprov-old-release \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential git ca-certificates pkg-config cargo rustc libseccomp-dev libcap-ng-dev patch \
      librust-virtiofsd-dev \
 && rm -rf /var/lib/apt/lists/*
# CAs this host trusts beyond the distribution's (a TLS-inspecting proxy's): qemuprov hands them over as host-ca/
# in the build context, so that pip, git and cargo here trust what the host trusts. Builder images stay local.
COPY host-ca/ /usr/local/share/ca-certificates/qemuprov-host/
RUN update-ca-certificates >/dev/null 2>&1
