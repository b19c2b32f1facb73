/*
 * ram_track: which pages of another process's memory were written since the last look, and
 * their contents, without that process's help (contract: switch/native-io.ts; used by
 * agent/drivers/qemu/ram-track.ts for a QEMU guest's RAM).
 *
 *   uffdWriteTrackingAvailable(): boolean
 *        whether this kernel has asynchronous userfaultfd write protection and PAGEMAP_SCAN
 *        (Linux 6.7 or later): a probe on a userfaultfd of the caller's own, closed again.
 *   uffdAdopt(pid: number, targetFd: number): number
 *        a copy of process pid's descriptor targetFd (pidfd_getfd(2)), close-on-exec.
 *   uffdTrackWrites(ufd: number, start: number, length: number): 'new' | 'adopted'
 *        enables asynchronous write protection on the userfaultfd (UFFD_FEATURE_WP_ASYNC,
 *        WP_UNPOPULATED, WP_HUGETLBFS_SHMEM), registers [start, start+length) of its address
 *        space for it and write-protects the whole range: from here on every write to a page of
 *        the range is resolved by the kernel alone (the writer never waits for us) and leaves the
 *        page "written" until the next scan. 'adopted' when the descriptor was already enabled
 *        (by an earlier agent): the range is registered again and its protection left as it is,
 *        so the next scan reports every page written since that agent's last scan (a page never
 *        protected counts as written: never less than what was written).
 *   pagemapScanWritten(pagemapFd: number, start: number, length: number, out: Float64Array):
 *        { regions: number, walkEnd: number }
 *        one PAGEMAP_SCAN ioctl on /proc/PID/pagemap: the runs of pages written since they were
 *        last protected, as (offset from start, length) pairs into out, each run protected again
 *        in the same walk (atomically: a write after the walk passed a page is seen next time).
 *        The walk stops when out is full or after 512 runs; walkEnd is where it stopped (start +
 *        length when done), and everything before walkEnd is reported and protected again.
 *   readProcessMemory(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number): number
 *        copies `count` (address, length) ranges of process pid's memory back to back into
 *        buf[offset ...] with process_vm_readv(2) (IOV_MAX ranges per call); the bytes copied.
 *   writeProcessMemory(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number): number
 *        the other way (process_vm_writev(2)): buf[offset ...] into the ranges (a restore's RAM,
 *        written into a QEMU waiting for its incoming device state).
 *
 * Guarantees: synchronous, no allocation but the scan's region vector (on the stack) and the
 * iovec arrays; a refusal is ERR_NATIVE_IO with the errno's code; a short read (the range is not
 * mapped) is ERR_NATIVE_IO naming the range. Addresses are passed as JS numbers: user addresses
 * on x86-64 are below 2^47, exact in a double.
 *
 * The kernel's structures of Linux 6.7 are declared here: the distribution's headers (Linux 6.1)
 * predate them; their layout is part of the kernel's stable user ABI.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"

#define VN_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#define VN_UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define VN_UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#define VN_UFFD_FEATURES (VN_UFFD_FEATURE_WP_ASYNC | VN_UFFD_FEATURE_WP_UNPOPULATED | VN_UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

struct vn_page_region {
  uint64_t start, end, categories;
};
struct vn_pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define VN_PAGEMAP_SCAN _IOWR('f', 16, struct vn_pm_scan_arg)
#define VN_PM_SCAN_WP_MATCHING (1ULL << 0)
#define VN_PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define VN_PAGE_IS_WRITTEN (1ULL << 1)

/* Largest exact integer of a double: addresses and lengths must stay below it. */
#define MAX_EXACT 9007199254740991LL

napi_value UffdWriteTrackingAvailable(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  int ok = 0;
  if (fd >= 0) {
    struct uffdio_api api = {.api = UFFD_API, .features = VN_UFFD_FEATURES};
    ok = ioctl(fd, UFFDIO_API, &api) == 0;
    close(fd);
  }
  napi_value r;
  napi_get_boolean(env, ok, &r);
  return r;
}

napi_value UffdAdopt(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t pid, target;
  if (!arg_int(env, argv[0], 1, 0x7fffffff, &pid, "uffdAdopt: pid") || !arg_int(env, argv[1], 0, 0x7fffffff, &target, "uffdAdopt: targetFd")) return NULL;
  char op[64];
  snprintf(op, sizeof op, "uffdAdopt(%lld, %lld)", (long long)pid, (long long)target);
  int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (pidfd < 0) {
    throw_sys(env, op, "pidfd_open", errno);
    return NULL;
  }
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)target, 0);
  int err = errno;
  close(pidfd);
  if (fd < 0) {
    throw_sys(env, op, "pidfd_getfd", err);
    return NULL;
  }
  napi_value r;
  napi_create_int32(env, fd, &r);
  return r;
}

static int arg_range(napi_env env, napi_value vs, napi_value vl, int64_t *start, int64_t *len, const char *fn) {
  char what[64];
  snprintf(what, sizeof what, "%s: start", fn);
  if (!arg_int(env, vs, 0, MAX_EXACT, start, what)) return 0;
  snprintf(what, sizeof what, "%s: length", fn);
  if (!arg_int(env, vl, 4096, MAX_EXACT, len, what)) return 0;
  if ((*start | *len) & 4095) {
    throw_range(env, "%s: start and length must be multiples of 4096", fn);
    return 0;
  }
  return 1;
}

napi_value UffdTrackWrites(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  int64_t start, len;
  if (!arg_fd(env, argv[0], &fd) || !arg_range(env, argv[1], argv[2], &start, &len, "uffdTrackWrites")) return NULL;
  char op[80];
  snprintf(op, sizeof op, "uffdTrackWrites(%d, 0x%llx)", fd, (unsigned long long)start);
  struct uffdio_api api = {.api = UFFD_API, .features = VN_UFFD_FEATURES};
  int adopted = 0;
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    /* EINVAL also when the descriptor was enabled before (by an agent that ran earlier): the
     * registration below then tells the two apart (it fails on a descriptor never enabled). */
    if (errno != EINVAL) {
      throw_sys(env, op, "UFFDIO_API", errno);
      return NULL;
    }
    adopted = 1;
  } else if ((api.features & VN_UFFD_FEATURE_WP_ASYNC) == 0) {
    throw_io(env, "%s: this kernel has no asynchronous userfaultfd write protection (Linux 6.7 or later)", op);
    return NULL;
  }
  struct uffdio_register reg = {.range = {.start = (uint64_t)start, .len = (uint64_t)len}, .mode = UFFDIO_REGISTER_MODE_WP};
  if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
    if (adopted && errno == EINVAL) {
      throw_io(env, "%s: the userfaultfd refused asynchronous write protection (a kernel before Linux 6.7, or a descriptor another program set up)", op);
      return NULL;
    }
    throw_sys(env, op, "UFFDIO_REGISTER", errno);
    return NULL;
  }
  /* Adopted: the protection the earlier agent left goes on (registering again changes none of
   * it), so the next scan also reports what was written since that agent's last scan. */
  struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)start, .len = (uint64_t)len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (!adopted && ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0) {
    throw_sys(env, op, "UFFDIO_WRITEPROTECT", errno);
    return NULL;
  }
  napi_value r;
  napi_create_string_utf8(env, adopted ? "adopted" : "new", NAPI_AUTO_LENGTH, &r);
  return r;
}

#define SCAN_VEC 512

napi_value PagemapScanWritten(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  int64_t start, len;
  double *out;
  size_t cap;
  if (!arg_fd(env, argv[0], &fd) || !arg_range(env, argv[1], argv[2], &start, &len, "pagemapScanWritten") ||
      !arg_f64array(env, argv[3], &out, &cap, "pagemapScanWritten: out"))
    return NULL;
  size_t max_regions = cap / 2;
  if (max_regions == 0) {
    throw_range(env, "pagemapScanWritten: out must hold at least one (offset, length) pair");
    return NULL;
  }
  /* One walk: the kernel already joins adjacent written pages into one region; the caller joins
   * a run its walks' ends cut in two (ram-track.ts). */
  struct vn_page_region vec[SCAN_VEC];
  uint64_t end = (uint64_t)(start + len);
  struct vn_pm_scan_arg a = {
      .size = sizeof a,
      .flags = VN_PM_SCAN_WP_MATCHING | VN_PM_SCAN_CHECK_WPASYNC,
      .start = (uint64_t)start,
      .end = end,
      .vec = (uint64_t)(uintptr_t)vec,
      .vec_len = max_regions < SCAN_VEC ? max_regions : SCAN_VEC,
      .category_mask = VN_PAGE_IS_WRITTEN,
      .return_mask = VN_PAGE_IS_WRITTEN,
  };
  long n = ioctl(fd, VN_PAGEMAP_SCAN, &a);
  if (n < 0) {
    char op[80];
    snprintf(op, sizeof op, "pagemapScanWritten(%d, 0x%llx)", fd, (unsigned long long)start);
    throw_sys(env, op, "PAGEMAP_SCAN", errno);
    return NULL;
  }
  for (long i = 0; i < n; i++) {
    out[2 * i] = (double)(vec[i].start - (uint64_t)start);
    out[2 * i + 1] = (double)(vec[i].end - vec[i].start);
  }
  uint64_t pos = a.walk_end;
  napi_value r, v;
  napi_create_object(env, &r);
  napi_create_uint32(env, (uint32_t)n, &v);
  napi_set_named_property(env, r, "regions", v);
  napi_create_double(env, (double)(pos < end ? pos : end), &v);
  napi_set_named_property(env, r, "walkEnd", v);
  return r;
}

/* readProcessMemory / writeProcessMemory: the same argument checks and batching, one direction each. */
static napi_value process_memory(napi_env env, napi_callback_info info, int write) {
  const char *fn = write ? "writeProcessMemory" : "readProcessMemory";
  GET_ARGS(5);
  int64_t pid, count, offset;
  double *ranges;
  size_t rlen, blen;
  uint8_t *buf;
  char w_pid[40], w_ranges[40], w_count[40], w_buf[40], w_offset[40];
  snprintf(w_pid, sizeof w_pid, "%s: pid", fn);
  snprintf(w_ranges, sizeof w_ranges, "%s: ranges", fn);
  snprintf(w_count, sizeof w_count, "%s: count", fn);
  snprintf(w_buf, sizeof w_buf, "%s: buf", fn);
  snprintf(w_offset, sizeof w_offset, "%s: offset", fn);
  if (!arg_int(env, argv[0], 1, 0x7fffffff, &pid, w_pid) || !arg_f64array(env, argv[1], &ranges, &rlen, w_ranges) ||
      !arg_int(env, argv[2], 0, (int64_t)(rlen / 2), &count, w_count) || !arg_bytes(env, argv[3], &buf, &blen, w_buf) ||
      !arg_int(env, argv[4], 0, (int64_t)blen, &offset, w_offset))
    return NULL;
  uint64_t total = 0;
  for (int64_t i = 0; i < count; i++) {
    if (ranges[2 * i] < 0 || ranges[2 * i + 1] < 0 || ranges[2 * i] > (double)MAX_EXACT || ranges[2 * i + 1] > (double)MAX_EXACT) {
      throw_range(env, "%s: range %lld is not an address and a length", fn, (long long)i);
      return NULL;
    }
    total += (uint64_t)ranges[2 * i + 1];
  }
  if (total > blen - (uint64_t)offset) {
    throw_range(env, "%s: %llu bytes do not fit in the buffer's %llu from offset %lld", fn, (unsigned long long)total, (unsigned long long)(blen - (uint64_t)offset), (long long)offset);
    return NULL;
  }
  struct iovec local, remote[IOV_MAX];
  uint8_t *dst = buf + offset;
  for (int64_t i = 0; i < count;) {
    int64_t k = count - i < IOV_MAX ? count - i : IOV_MAX;
    size_t want = 0;
    for (int64_t j = 0; j < k; j++) {
      remote[j].iov_base = (void *)(uintptr_t)(uint64_t)ranges[2 * (i + j)];
      remote[j].iov_len = (size_t)(uint64_t)ranges[2 * (i + j) + 1];
      want += remote[j].iov_len;
    }
    local.iov_base = dst;
    local.iov_len = want;
    ssize_t got = write ? process_vm_writev((pid_t)pid, &local, 1, remote, (unsigned long)k, 0) : process_vm_readv((pid_t)pid, &local, 1, remote, (unsigned long)k, 0);
    if (got < 0 || (size_t)got != want) {
      char op[96];
      snprintf(op, sizeof op, "%s(%lld, ranges %lld-%lld)", fn, (long long)pid, (long long)i, (long long)(i + k - 1));
      if (got < 0) throw_sys(env, op, write ? "process_vm_writev" : "process_vm_readv", errno);
      else throw_io(env, "%s: %s copied %zd of %zu bytes (a range not mapped)", op, write ? "process_vm_writev" : "process_vm_readv", got, want);
      return NULL;
    }
    dst += want;
    i += k;
  }
  napi_value r;
  napi_create_double(env, (double)total, &r);
  return r;
}

napi_value ReadProcessMemory(napi_env env, napi_callback_info info) { return process_memory(env, info, 0); }
napi_value WriteProcessMemory(napi_env env, napi_callback_info info) { return process_memory(env, info, 1); }
