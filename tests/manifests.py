"""A valid qemuprov.json for tests that need an install without building one."""

from __future__ import annotations

import json
from typing import Any

from qemuprov.recipe import VirtiofsdFlavour
from qemuprov.records.manifest import Manifest, Tools, VirtiofsdRecord


def manifest_json(**changes: Any) -> str:
    record = Manifest(name="q", prefix="/x/q", recipe={"name": "q"}, inputs="k", runner="host", binaries=(),
                      probe=(), virtiofsd=VirtiofsdRecord(VirtiofsdFlavour.C), firmware=(),
                      tools=Tools("0.0", "3.11.2"), timings={},
                      built_at="2026-12-01T00:00:00+00:00", log="/x/log", reproduce="qemuprov build q")
    return json.dumps({**record.to_json(), **changes})
