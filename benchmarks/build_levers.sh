#!/usr/bin/env bash
# One lever at a time: configure + build the emulators and virtiofsd of one QEMU tree with a given set of configure
# arguments and ccache mode, and append "NAME mode=… configure=S build=S steps=N" to a results file. The runs
# behind the lever table in the README's Speed section.
#
# Usage: benchmarks/build_levers.sh NAME none|plain|depend [CONFIGURE-ARG…]
#   TREE (default /var/cache/qemuprov-test/qemu-7.2), REF (v7.2-debian), WORK (/var/tmp/qemuprov-levers),
#   JOBS (nproc), CC (gcc) in the environment; PCH=1 puts qemuprov/build/assets/pch-cc (precompiled qemu/osdep.h,
#   clang only) in front of the compiler, as qemuprov build does.
set -euo pipefail
name=$1 mode=$2
shift 2
tree=${TREE:-/var/cache/qemuprov-test/qemu-7.2} ref=${REF:-v7.2-debian} work=${WORK:-/var/tmp/qemuprov-levers}
jobs=${JOBS:-$(nproc)} compiler=${CC:-gcc}
mkdir -p "$work"
[ -d "$work/src" ] || git clone -q --depth 1 --branch "$ref" "file://$tree" "$work/src"
build=$work/build-$name
rm -rf "$build" "$work/ccache-$name"
mkdir "$build"
export LC_ALL=C
case $mode in
  none) export CCACHE_DISABLE=1 cc=$compiler ;;
  plain) export CCACHE_DIR=$work/ccache-$name cc="ccache $compiler" ;;
  depend) export CCACHE_DIR=$work/ccache-$name CCACHE_DEPEND=1 cc="ccache $compiler" ;;
  *) echo "mode: none, plain or depend" >&2; exit 2 ;;
esac
[ -n "${PCH:-}" ] && cc="$(cd "$(dirname "$0")/.." && pwd)/qemuprov/build/assets/pch-cc $cc"
start=$(date +%s.%N)
(cd "$build" && "$work/src/configure" --cc="$cc" "$@" >configure.log 2>&1)
configured=$(date +%s.%N)
targets=(qemu-system-x86_64 qemu-system-aarch64 trace/trace-events-all)
[ -d "$work/src/tools/virtiofsd" ] && targets+=(tools/virtiofsd/virtiofsd)
(cd "$build" && ninja -j "$jobs" "${targets[@]}" >ninja.log 2>&1)
built=$(date +%s.%N)
printf '%s mode=%s configure=%.1f build=%.1f steps=%s\n' "$name" "$mode" "$(echo "$configured - $start" | bc)" \
  "$(echo "$built - $configured" | bc)" "$(grep -c '^\[' "$build/ninja.log")" | tee -a "$work/results.txt"
