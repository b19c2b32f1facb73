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
 * Only the 2 MiB pages of a range that hold data are collapsed: those with at least one page of
 * the process's own (present and mapped only by it, or swapped out; /proc/PID/pagemap bits 56,
 * 62, 63). A 2 MiB page whose small pages are all unpopulated or map the shared zero page (what a
 * QEMU background snapshot leaves of guest RAM the guest never wrote: it reads every page before
 * write-protecting it) is left as it is, because MADV_COLLAPSE would give it 2 MiB of real memory
 * filled with zeros. Without a readable pagemap every 2 MiB page is asked for.
 *
 * Output: one line per range, `START LENGTH OK MS ASKED` or `START LENGTH ERRNO-NAME MS ASKED`
 * (ASKED: the bytes of it that held data and were asked for; a range the kernel refused is
 * reported, the others are still tried). Exit status: 0 when every range was collapsed, 1 when
 * some were refused, 2 on bad arguments or a process that cannot be opened.
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
#include <fcntl.h>

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

#define HUGE (2ULL << 20)
#define SMALL 4096ULL
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_EXCLUSIVE (1ULL << 56)
#define MAX_IOV 512

/* Whether the 2 MiB page at `addr` holds a page of the process's own (header comment); 1 when
 * the pagemap cannot be read, so that the kernel decides. */
static int holds_data(int pagemap, unsigned long long addr) {
  uint64_t e[HUGE / SMALL];
  if (pagemap < 0) return 1;
  ssize_t n = pread(pagemap, e, sizeof e, (off_t)(addr / SMALL * sizeof(uint64_t)));
  if (n != (ssize_t)sizeof e) return 1;
  for (size_t i = 0; i < HUGE / SMALL; i++) {
    if ((e[i] & PM_SWAPPED) || ((e[i] & PM_PRESENT) && (e[i] & PM_EXCLUSIVE))) return 1;
  }
  return 0;
}

/* MADV_COLLAPSE of the 2 MiB pages of [start, start+len) that hold data, runs of them merged,
 * up to MAX_IOV runs per call. Returns 0 or the first errno; *asked gets the bytes asked for. */
static int collapse_range(int pidfd, int pagemap, unsigned long long start, unsigned long long len, unsigned long long *asked) {
  struct iovec iov[MAX_IOV];
  int n = 0, err = 0;
  *asked = 0;
  for (unsigned long long a = start; a + HUGE <= start + len; a += HUGE) {
    if (!holds_data(pagemap, a)) continue;
    *asked += HUGE;
    if (n > 0 && (uintptr_t)iov[n - 1].iov_base + iov[n - 1].iov_len == a) {
      iov[n - 1].iov_len += HUGE;
      continue;
    }
    if (n == MAX_IOV) {
      if (syscall(SYS_process_madvise, pidfd, iov, (unsigned long)n, MADV_COLLAPSE, 0U) < 0 && !err) err = errno;
      n = 0;
    }
    iov[n].iov_base = (void *)(uintptr_t)a;
    iov[n].iov_len = HUGE;
    n++;
  }
  if (n > 0 && syscall(SYS_process_madvise, pidfd, iov, (unsigned long)n, MADV_COLLAPSE, 0U) < 0 && !err) err = errno;
  return err;
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
  char pm_path[64];
  snprintf(pm_path, sizeof pm_path, "/proc/%ld/pagemap", pid);
  int pagemap = open(pm_path, O_RDONLY | O_CLOEXEC);
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
    if (start % HUGE || len % HUGE) {
      fprintf(stderr, "range %s is not in whole 2 MiB pages\n", argv[i]);
      return 2;
    }
    unsigned long long asked;
    double t0 = now_ms();
    int e = collapse_range(pidfd, pagemap, start, len, &asked);
    double ms = now_ms() - t0;
    if (e) {
      refused = 1;
      printf("0x%llx %llu %s %.1f %llu\n", start, len, strerrorname_np(e) ? strerrorname_np(e) : "EUNKNOWN", ms, asked);
    } else {
      printf("0x%llx %llu OK %.1f %llu\n", start, len, ms, asked);
    }
  }
  if (pagemap >= 0) close(pagemap);
  close(pidfd);
  return refused;
}
