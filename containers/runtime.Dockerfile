# Runtime image for CI: one qemuprov install on PATH, with only the libraries (and, for trees without
# firmware blobs, the distribution firmware) it needs. `qemuprov image NAME` fills in the build arguments.
ARG BASE=debian:bookworm
FROM ${BASE}
ARG PACKAGES=""
RUN if [ -n "$PACKAGES" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
ARG NAME
COPY prefix/ /opt/qemuprov/${NAME}/
# QEMU looks for firmware in its own share/qemu; point the files it lacks at the distribution's copies
# (FIRMWARE: the files its arches load, from the packages installed above).
ARG FIRMWARE=""
RUN for file in $FIRMWARE; do \
      [ -e "$file" ] || continue; \
      target="/opt/qemuprov/${NAME}/share/qemu/${file##*/}"; \
      [ -e "$target" ] || ln -s "$file" "$target"; \
    done
ENV PATH=/opt/qemuprov/${NAME}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
