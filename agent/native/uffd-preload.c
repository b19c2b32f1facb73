/*
 * vnsnap-uffd-preload: a library QEMU is started with (LD_PRELOAD) so that the agent can track
 * which pages of the guest's RAM were written between two snapshots.
 *
 * Why a preloaded library: a userfaultfd belongs to the address space of the process that
 * creates it, and only that process can create it. The agent needs one for QEMU's address space
 * (to write-protect the guest's RAM asynchronously and read back what was written, with
 * PAGEMAP_SCAN); QEMU 7.2 has no option that makes one it does not use itself. This constructor
 * runs inside QEMU after its exec and before its main(), creates the userfaultfd (close-on-exec,
 * non-blocking) and does nothing else with it: the agent takes a copy with pidfd_getfd(2) and does
 * the rest (agent/drivers/qemu/ram-track.ts). QEMU never reads or writes the descriptor.
 *
 * Guarantees: never fails QEMU's start: when the kernel refuses (no userfaultfd, a non-root user
 * with vm.unprivileged_userfaultfd=0) nothing is created, and the agent reports that the VM's
 * writes cannot be tracked. LD_PRELOAD is removed from QEMU's environment, so processes QEMU
 * starts (an `exec:` migration's shell) do not load it again. Do not combine with QEMU's
 * -daemonize: its fork leaves the descriptor bound to the exiting parent's address space (the
 * driver never daemonizes; it starts QEMU in a session of its own).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

__attribute__((constructor)) static void vnsnap_uffd_create(void) {
  (void)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  unsetenv("LD_PRELOAD");
}
