"""What qemuprov knows about QEMU trees and binaries: plans from a tree, probes of binaries, KVM, host build
dependencies, OSv's run.py."""
