"""Lean installs: share/qemu keeps what the install's arches load without UEFI, and a recipe can keep it all."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemuprov.errors import UserError
from qemuprov.knowledge import firmware
from qemuprov.recipe import FirmwareSet, RecipeBook, default_layers

# What QEMU's pc-bios/meson.build installs (blobs, the decompressed edk2 images), and the directories beside them.
UPSTREAM_LIST = (
    "bios.bin bios-256k.bin bios-microvm.bin qboot.rom vgabios.bin vgabios-cirrus.bin vgabios-stdvga.bin "
    "vgabios-vmware.bin vgabios-qxl.bin vgabios-virtio.bin vgabios-ramfb.bin vgabios-bochs-display.bin "
    "vgabios-ati.bin openbios-sparc32 openbios-sparc64 openbios-ppc QEMU,tcx.bin QEMU,cgthree.bin "
    "pxe-e1000.rom pxe-eepro100.rom pxe-ne2k_pci.rom pxe-pcnet.rom pxe-rtl8139.rom pxe-virtio.rom "
    "efi-e1000.rom efi-eepro100.rom efi-ne2k_pci.rom efi-pcnet.rom efi-rtl8139.rom efi-virtio.rom "
    "efi-e1000e.rom efi-vmxnet3.rom qemu-nsis.bmp multiboot.bin multiboot_dma.bin linuxboot.bin "
    "linuxboot_dma.bin kvmvapic.bin pvh.bin s390-ccw.img slof.bin skiboot.lid palcode-clipper "
    "u-boot.e500 u-boot-sam460-20100605.bin qemu_vga.ndrv edk2-licenses.txt hppa-firmware.img "
    "opensbi-riscv32-generic-fw_dynamic.bin opensbi-riscv64-generic-fw_dynamic.bin npcm7xx_bootrom.bin "
    "vof.bin vof-nvram.bin edk2-aarch64-code.fd edk2-arm-code.fd edk2-arm-vars.fd edk2-i386-code.fd "
    "edk2-i386-secure-code.fd edk2-i386-vars.fd edk2-x86_64-code.fd edk2-x86_64-secure-code.fd "
    "trace-events-all "
)
UPSTREAM_BLOBS = tuple(UPSTREAM_LIST.split())
DIRECTORIES = ("firmware", "keymaps", "dtb", "vhost-user")


def _datadir(tmp_path: Path) -> Path:
    datadir = tmp_path / "share" / "qemu"
    for directory in DIRECTORIES:
        (datadir / directory).mkdir(parents=True)
        (datadir / directory / "x").write_text("x")
    for blob in UPSTREAM_BLOBS:
        (datadir / blob).write_text(blob)
    return datadir


def test_both_arches_keep_seabios_option_roms_and_keymaps_but_no_uefi(tmp_path: Path) -> None:
    datadir = _datadir(tmp_path)
    removed = firmware.keep_needed(datadir, ("x86_64", "aarch64"))
    kept = sorted(p.name for p in datadir.iterdir())
    for name in ("bios-256k.bin", "vgabios-stdvga.bin", "efi-virtio.rom", "linuxboot_dma.bin", "pvh.bin",
                 "kvmvapic.bin", "qboot.rom", "keymaps", "vhost-user", "trace-events-all"):
        assert name in kept
    assert not [name for name in kept if name.startswith(("edk2-", "openbios", "opensbi", "u-boot", "s390"))]
    assert {"firmware", "dtb", "edk2-aarch64-code.fd", "slof.bin", "hppa-firmware.img"} <= set(removed)
    assert not (datadir / "firmware").exists()  # edk2's descriptors would name files that are gone


def test_aarch64_alone_needs_no_pc_bios(tmp_path: Path) -> None:
    datadir = _datadir(tmp_path)
    firmware.keep_needed(datadir, ("aarch64",))
    kept = {p.name for p in datadir.iterdir()}
    assert "efi-virtio.rom" in kept and "bios-256k.bin" not in kept and "vgabios.bin" not in kept


def test_an_arch_it_does_not_know_keeps_everything(tmp_path: Path) -> None:
    datadir = _datadir(tmp_path)
    assert firmware.keep_needed(datadir, ("x86_64", "riscv64")) == []
    assert len(list(datadir.iterdir())) == len(UPSTREAM_BLOBS) + len(DIRECTORIES)


def _recipe(tmp_path: Path, line: str) -> Path:
    (tmp_path / "r.toml").write_text(f'format = 1\nname = "r"\nbuilder = "debian-bookworm"\n[qemu]\n'
                                     f'git = "file:///q"\nref = "v1"\n'
                                     f'arches = ["x86_64"]\n{line}\n')
    return tmp_path


def test_a_recipe_keeps_all_firmware_or_is_told_what_it_may_say(tmp_path: Path) -> None:
    book = RecipeBook(default_layers([_recipe(tmp_path, 'firmware = "all"')]))
    recipe = book.load("r")
    assert recipe.qemu is not None and recipe.qemu.firmware is FirmwareSet.ALL
    assert recipe.build_inputs()["qemu"]["firmware"] == "all"  # another set of files is another build
    with pytest.raises(UserError, match='qemu.firmware: "al" is not one of needed, all; did you mean "all"'):
        RecipeBook(default_layers([_recipe(tmp_path, 'firmware = "al"')])).load("r")
