/*
 * vnsnap-thp-collapse PID START:LENGTH... — ask the kernel to map the given ranges of process
 * PID's memory with transparent huge pages again (process_madvise MADV_COLLAPSE, Linux >= 6.1),
 * and nothing else. agent/drivers/qemu/ram-huge-pages.ts says which ranges (a QEMU's guest RAM)
 * and when (ahead of a background snapshot's cut, outside the pause).
 *
 * Why a program and not Node: the call is a system call Node has no binding for, and it runs for
 * tens of milliseconds (the kernel copies small pages into huge ones), which must not be spent on
 * the agent's event loop.
 *
 * Output: one line per range, `START LENGTH OK MS` or `START LENGTH ERRNO-NAME MS` (a range the
 * kernel refused is reported, the others are still tried). Exit status: 0 when every range was
 * collapsed, 1 when some were refused, 2 on bad arguments or a process that cannot be opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PID START:LENGTH...\n", argv[0]);
    return 2;
  }
  char *end;
  long pid = strtol(argv[1], &end, 10);
  if (*end || pid <= 0) {
    fprintf(stderr, "bad pid %s\n", argv[1]);
    return 2;
  }
  int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (pidfd < 0) {
    fprintf(stderr, "pidfd_open %ld: %s\n", pid, strerror(errno));
    return 2;
  }
  int refused = 0;
  for (int i = 2; i < argc; i++) {
    unsigned long long start, len;
    char *colon = strchr(argv[i], ':');
    if (!colon) {
      fprintf(stderr, "bad range %s\n", argv[i]);
      return 2;
    }
    start = strtoull(argv[i], &end, 0);
    if (end != colon) {
      fprintf(stderr, "bad range %s\n", argv[i]);
      return 2;
    }
    len = strtoull(colon + 1, &end, 0);
    if (*end || len == 0) {
      fprintf(stderr, "bad range %s\n", argv[i]);
      return 2;
    }
    struct iovec iov = {.iov_base = (void *)(uintptr_t)start, .iov_len = (size_t)len};
    double t0 = now_ms();
    long r = syscall(SYS_process_madvise, pidfd, &iov, 1UL, MADV_COLLAPSE, 0U);
    int e = errno;
    double ms = now_ms() - t0;
    if (r < 0) {
      refused = 1;
      printf("0x%llx %llu %s %.1f\n", start, len, strerrorname_np(e) ? strerrorname_np(e) : "EUNKNOWN", ms);
    } else {
      printf("0x%llx %llu OK %.1f\n", start, len, ms);
    }
  }
  close(pidfd);
  return refused;
}
