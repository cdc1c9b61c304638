"""Real live migration in the test bed: a small guest under QEMU/TCG and pre-copy between two
QEMU processes (issue 18; set-up and measurements in shared/notes/qemu-migration.md).

* `image`   the guest: stock Debian kernel + busybox-static initramfs (`guest-init.sh` as /init),
            from Debian packages only, cached under $SOD_CACHE by versions and init-script hash
* `vm`      one QEMU process with a workload (idle, or dirtying a working set at a set rate)
* `qmp`     a stdlib QMP client (commands, events with QEMU's timestamps)
* `migrate` `migrate(src, dst, uri) -> MigrationResult`: QEMU's figures, phases as callbacks,
            the guest checked alive and intact on the destination (`console`)
* `netns`   two network namespaces on a veth link shaped with tc tbf ("two hosts")
"""
