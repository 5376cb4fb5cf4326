"""Builder images behind a TLS-inspecting proxy: a base image pulled from a registry trusts none of the host's
own CAs, so the pip step of a builder Dockerfile fails with CERTIFICATE_VERIFY_FAILED, unless qemuprov hands
the host's CAs to the build (host-ca/ in its context). This machine's egress re-signs TLS with such a CA."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import pytest

from qemuprov.errors import InfraError
from qemuprov.infra import builder_images, engines

BARE_BASE = "qemuprov-test/bookworm-without-host-cas:latest"


@pytest.fixture(scope="module")
def bare_base(engine: str) -> Iterator[object]:
    """debian:bookworm as a registry would serve it: without the CAs scripts/test-engine copies in."""
    client = engines.client(engines.require_engine())  # a loaded engine gets its 30 s, not auto's 5
    if not builder_images.has_image(client, BARE_BASE):  # kept between runs: the engine's layer cache then holds
        container = client.containers.run(           # the builder's layers, as it does for any user
            "debian:bookworm", ["sh", "-c", "rm -rf /usr/local/share/ca-certificates/*"], detach=True,
            network_mode="none")
        container.wait()
        container.commit(repository=BARE_BASE.split(":")[0], tag="latest")
        container.remove()
    yield client


def test_builder_trusts_the_hosts_own_cas(bare_base: object) -> None:
    client = bare_base
    if not builder_images.host_cas():
        pytest.skip("this host trusts no CAs of its own: no TLS-inspecting proxy to pass through here")
    image = builder_images.builder_image("debian-bookworm", BARE_BASE).with_base_id(client)
    if builder_images.has_image(client, image.tag):  # build it again (from the engine's layer cache where it can)
        client.images.remove(image.tag, force=True, noprune=True)
    log = io.StringIO()
    builder_images.ensure_builder(client, image, log)  # pip installs meson over https inside the build
    assert "Successfully built" in log.getvalue() or "Successfully tagged" in log.getvalue()

    without = dataclasses.replace(image, cas=())  # the control: as before qemuprov handed the CAs over
    with pytest.raises(InfraError):
        builder_images.ensure_builder(client, without, log)
    assert "CERTIFICATE_VERIFY_FAILED" in log.getvalue()
