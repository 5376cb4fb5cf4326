"""The front door's rooms: one module per command or group of commands, each a list of `Command`s with their
arguments and their run(). `qemuprov --help` lists them in the order of ALL."""

from __future__ import annotations

from qemuprov.commands import bench, build, cache, completion, doctor, inspect, publish, sources, verify
from qemuprov.commands.base import Command

ALL: tuple[Command, ...] = (inspect.RECIPES, inspect.SHOW, inspect.PROBE, doctor.DOCTOR, build.BUILD, inspect.LIST,
                            inspect.ENV, verify.VERIFY, bench.BENCH, publish.IMAGE, sources.OUTDATED, sources.LOCK,
                            publish.PUSH, publish.REMOVE, cache.CACHE, completion.COMPLETION)
