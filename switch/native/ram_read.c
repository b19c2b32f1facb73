/*
 * ram_read: a tracked snapshot round's RAM read and its blocks' SHA-256s in libuv's thread pool,
 * off the agent's event loop (contract: switch/native-io.ts; used by agent/drivers/qemu/
 * ram-track.ts RamWriteTracker.readBlocks for a QEMU guest's RAM).
 *
 * Why: a round read the written blocks with process_vm_readv and the block image writer hashed
 * each 64 KiB block with node:crypto, both on the event loop: with the distro guest a round held
 * the loop up to 527 ms, and an agent's other VMs' cuts (their `stop`, the switch's drain) waited
 * behind it (docs/performance.md, issue 15). Here both run on a pool thread; the loop only starts
 * the work and settles its promise.
 *
 *   readProcessBlocks(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number,
 *                     blockSize: number, digests: Buffer, opts?: { portable?: boolean }): Promise<number>
 *        copies `count` (address, length) ranges of process pid's memory back to back into
 *        buf[offset ...] (process_vm_readv(2), at most READ_BATCH bytes per call), and writes the
 *        SHA-256 of each blockSize bytes of what it copied (from offset on) into digests[32*i ..
 *        32*i+32); resolves with the bytes copied. The bytes copied must be a whole number of
 *        blocks. The hashing is the SHA extensions' (sha256x2.c, two blocks' rounds interleaved)
 *        where this CPU has them, else portable C (sha256_portable.c); opts.portable forces the
 *        latter (tests, comparisons). digests null: the read alone, nothing hashed (a stopped
 *        round: its pause holds the read, its blocks are hashed after the resume). opts.fifoPriority (1-99): the pool thread runs the work at
 *        SCHED_FIFO at that priority and puts its own policy back after it (a read inside a VM's
 *        pause, at the agent's cut window's priority: agent/cut-priority.ts); where that is not
 *        permitted the work runs at the thread's own policy, nothing is raised.
 *        opts.ownThread: the work runs on a thread of its own, created for it, never in libuv's
 *        pool (whose four threads the store's compression, hashing and file I/O share: a read
 *        inside a VM's pause waited behind them), created at SCHED_FIFO when fifoPriority asks for
 *        it (where permitted), and settles on the loop through a threadsafe function; where no
 *        thread can be created, in the pool. opts.timing (a Float64Array of
 *        at least 3): when the promise settles it holds the wall-clock µs (CLOCK_REALTIME) at
 *        which the work was submitted, began on its thread and ended (the cut trace's
 *        PHASE_RAM_QUEUE and PHASE_RAM_READ).
 *
 *   sha256Blocks(data: Buffer, blockSize: number, digests: Buffer, opts?: { portable?: boolean }): Promise<number>
 *        the SHA-256 of each blockSize bytes of data (a whole number of blocks) into digests, in
 *        the pool; resolves with data's length.
 *
 * Guarantees: arguments are checked at the call (TypeError / RangeError, code
 * ERR_INVALID_ARGUMENT, thrown: no work queued); the ranges are copied at the call (the caller
 * may reuse them at once). buf and digests are referenced until the promise settles and written
 * only by the pool thread until then: the caller must neither touch nor give them away before
 * (a settled promise means no thread writes them any more, also after a failure). Each digest is
 * of exactly the bytes left in buf. A refused copy rejects with ERR_NATIVE_IO and the errno's
 * code; a short one (a range not mapped) with ERR_NATIVE_IO naming the range; digests are then
 * unspecified. Addresses are JS numbers (x86-64 user addresses are below 2^47: exact).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "addon.h"
#include "napi_util.h"
#include "sha256.h"

/* Largest exact integer of a double: addresses and lengths must stay below it. */
#define MAX_EXACT 9007199254740991LL
/* Bytes per process_vm_readv: the blocks just copied are hashed while they are still in the cache. */
#define READ_BATCH (512 * 1024)
#define MAX_BLOCK (1 << 30)

typedef struct {
  napi_async_work work;
  napi_threadsafe_function tsfn; /* opts.ownThread: its thread's way back to the loop */
  napi_deferred deferred;
  napi_ref buf_ref, digests_ref, timing_ref;
  double *timing;  /* opts.timing's storage (referenced by timing_ref), NULL */
  double times[3]; /* submitted, begun, ended: wall-clock µs */
  pid_t pid;
  uint64_t *ranges; /* (address, length) pairs, copied at the call */
  size_t count;
  uint8_t *dst, *digests;
  size_t total, block;
  int portable;
  int fifo; /* SCHED_FIFO priority for the work, 0: the thread's own */
  int hash_only; /* sha256Blocks: no read, the blocks at dst hashed */
  /* The outcome (written by the pool thread, read by complete()). */
  int err;        /* errno of a refused copy, 0 */
  size_t got, want; /* a short copy: bytes copied of those asked for */
  size_t bad;     /* the range a failed copy stopped in */
} rjob_t;

static void rjob_free(napi_env env, rjob_t *j) {
  if (j->buf_ref) napi_delete_reference(env, j->buf_ref);
  if (j->digests_ref) napi_delete_reference(env, j->digests_ref);
  if (j->timing_ref) napi_delete_reference(env, j->timing_ref);
  if (j->work) napi_delete_async_work(env, j->work);
  free(j->ranges);
  free(j);
}

/* The digests of blocks [from, to) of the copied bytes. */
static void hash_blocks(rjob_t *j, size_t from, size_t to) {
  size_t bs = j->block;
  size_t i = from;
  if (!j->portable) {
    for (; i + 1 < to; i += 2) vn_sha256_ni_two(j->dst + i * bs, j->dst + (i + 1) * bs, bs, j->digests + 32 * i, j->digests + 32 * (i + 1));
    if (i < to) vn_sha256_ni_two(j->dst + i * bs, NULL, bs, j->digests + 32 * i, NULL);
    return;
  }
  for (; i < to; i++) vn_sha256_portable(j->dst + i * bs, bs, j->digests + 32 * i);
}

static void read_and_hash(rjob_t *j);

/* Wall-clock µs (the cut trace's clock: CLOCK_REALTIME, as Date.now()). */
static double wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* The work at j->fifo's priority when asked and permitted, the pool thread's policy put back after it. */
static void execute(napi_env env, void *data) {
  (void)env;
  rjob_t *j = data;
  j->times[1] = wall_us();
  struct sched_param was = {0}, fifo = {.sched_priority = j->fifo};
  int policy = j->fifo ? sched_getscheduler(0) : -1;
  int raised = policy >= 0 && sched_getparam(0, &was) == 0 && sched_setscheduler(0, SCHED_FIFO, &fifo) == 0;
  j->portable = j->portable || !vn_sha256_ni_available();
  if (j->hash_only) hash_blocks(j, 0, j->total / j->block);
  else read_and_hash(j);
  if (raised) sched_setscheduler(0, policy, &was);
  j->times[2] = wall_us();
}

static void read_and_hash(rjob_t *j) {
  struct iovec local, remote[IOV_MAX];
  size_t rix[IOV_MAX]; /* the range each remote piece is of */
  size_t ri = 0, roff = 0, done = 0, hashed = 0;
  while (ri < j->count) {
    size_t k = 0, want = 0;
    while (ri < j->count && k < IOV_MAX && want < READ_BATCH) {
      size_t left = j->ranges[2 * ri + 1] - roff, take = left < READ_BATCH - want ? left : READ_BATCH - want;
      remote[k].iov_base = (void *)(uintptr_t)(j->ranges[2 * ri] + roff);
      remote[k].iov_len = take;
      rix[k++] = ri;
      want += take;
      roff += take;
      if (roff == j->ranges[2 * ri + 1]) ri++, roff = 0;
    }
    local.iov_base = j->dst + done;
    local.iov_len = want;
    ssize_t got = process_vm_readv(j->pid, &local, 1, remote, (unsigned long)k, 0);
    if (got < 0 || (size_t)got != want) {
      size_t at = got < 0 ? 0 : (size_t)got, m = 0;
      while (m + 1 < k && at >= remote[m].iov_len) at -= remote[m++].iov_len;
      j->bad = rix[m];
      if (got < 0) j->err = errno ? errno : EIO;
      else j->got = (size_t)got, j->want = want;
      return;
    }
    done += want;
    size_t complete = done / j->block;
    if (j->digests) hash_blocks(j, hashed, complete);
    hashed = complete;
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  rjob_t *j = data;
  if (j->timing) memcpy(j->timing, j->times, sizeof j->times);
  char op[96];
  snprintf(op, sizeof op, "readProcessBlocks(%d, range %zu)", (int)j->pid, j->bad);
  if (status != napi_ok) {
    napi_reject_deferred(env, j->deferred, make_error(env, "ERR_NATIVE_IO", "readProcessBlocks: the work was cancelled"));
  } else if (j->err) {
    napi_reject_deferred(env, j->deferred, sys_error(env, op, "process_vm_readv", j->err));
  } else if (j->want) {
    char msg[192];
    snprintf(msg, sizeof msg, "%s: process_vm_readv copied %zu of %zu bytes (a range not mapped)", op, j->got, j->want);
    napi_reject_deferred(env, j->deferred, make_error(env, "ERR_NATIVE_IO", msg));
  } else {
    napi_value r;
    napi_create_double(env, (double)j->total, &r);
    napi_resolve_deferred(env, j->deferred, r);
  }
  rjob_free(env, j);
}

/* The settling of an ownThread job, on the loop (env NULL: the environment is going away). */
static void lane_settle(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  rjob_t *j = data;
  if (env) complete(env, napi_ok, j);
  else free(j->ranges), free(j);
}

/* An ownThread job's thread: the work, then its settling queued to the loop and the tsfn let go. */
static void *lane_main(void *data) {
  rjob_t *j = data;
  napi_threadsafe_function tsfn = j->tsfn;
  execute(NULL, j);
  napi_call_threadsafe_function(tsfn, j, napi_tsfn_blocking);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

/* j on a thread of its own (1), or 0 when none could be made (nothing left behind: the pool's then). */
static int start_lane(napi_env env, rjob_t *j, napi_value res) {
  if (napi_create_threadsafe_function(env, NULL, NULL, res, 0, 1, NULL, NULL, NULL, lane_settle, &j->tsfn) != napi_ok) return j->tsfn = NULL, 0;
  /* At SCHED_FIFO when asked (execute() tries itself where the thread could not be made so). */
  int ok = vn_thread_start(lane_main, j, j->fifo, 256 * 1024); /* read_and_hash's iovecs: ~24 KiB */
  if (ok) return 1;
  napi_release_threadsafe_function(j->tsfn, napi_tsfn_abort);
  j->tsfn = NULL;
  return 0;
}

/*
 * j started with buf, digests and timing (each may be NULL but buf) referenced until it settles,
 * on its own thread when own_thread (and one can be made), else queued to the pool; its promise.
 */
static napi_value queue(napi_env env, rjob_t *j, napi_value buf, napi_value digests, napi_value timing, int own_thread, const char *name) {
  napi_value promise = NULL, res;
  napi_status st = napi_create_reference(env, buf, 1, &j->buf_ref);
  if (st == napi_ok && digests) st = napi_create_reference(env, digests, 1, &j->digests_ref);
  if (st == napi_ok && timing) st = napi_create_reference(env, timing, 1, &j->timing_ref);
  if (st == napi_ok) st = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &res);
  if (st == napi_ok) st = napi_create_promise(env, &j->deferred, &promise);
  j->times[0] = wall_us();
  if (st == napi_ok && own_thread && start_lane(env, j, res)) return promise;
  if (st == napi_ok) st = napi_create_async_work(env, NULL, res, execute, complete, j, &j->work);
  if (st == napi_ok) st = napi_queue_async_work(env, j->work);
  if (st == napi_ok) return promise;
  rjob_free(env, j); /* a promise made is left pending: the exception below is the call's outcome */
  throw_io(env, "%s: cannot queue the work (N-API status %d)", name, (int)st);
  return NULL;
}

napi_value ReadProcessBlocks(napi_env env, napi_callback_info info) {
  GET_ARGS(8);
  int64_t pid, count, offset, block;
  double *ranges;
  size_t rlen, blen, dlen;
  uint8_t *buf, *digests;
  if (!arg_int(env, argv[0], 1, 0x7fffffff, &pid, "readProcessBlocks: pid") || !arg_f64array(env, argv[1], &ranges, &rlen, "readProcessBlocks: ranges") ||
      !arg_int(env, argv[2], 0, (int64_t)(rlen / 2), &count, "readProcessBlocks: count") || !arg_bytes(env, argv[3], &buf, &blen, "readProcessBlocks: buf") ||
      !arg_int(env, argv[4], 0, (int64_t)blen, &offset, "readProcessBlocks: offset") || !arg_int(env, argv[5], 1, MAX_BLOCK, &block, "readProcessBlocks: blockSize") ||
      (arg_present(env, argv[6]) && !arg_bytes(env, argv[6], &digests, &dlen, "readProcessBlocks: digests")))
    return NULL;
  if (!arg_present(env, argv[6])) digests = NULL, dlen = 0;
  uint64_t total = 0;
  for (int64_t i = 0; i < count; i++) {
    if (!(ranges[2 * i] >= 0 && ranges[2 * i + 1] >= 0 && ranges[2 * i] <= (double)MAX_EXACT && ranges[2 * i + 1] <= (double)MAX_EXACT) ||
        ranges[2 * i] != (double)(uint64_t)ranges[2 * i] || ranges[2 * i + 1] != (double)(uint64_t)ranges[2 * i + 1]) {
      throw_range(env, "readProcessBlocks: range %lld is not an address and a length", (long long)i);
      return NULL;
    }
    total += (uint64_t)ranges[2 * i + 1];
  }
  if (total > blen - (uint64_t)offset) {
    throw_range(env, "readProcessBlocks: %llu bytes do not fit in the buffer's %llu from offset %lld", (unsigned long long)total, (unsigned long long)(blen - (uint64_t)offset), (long long)offset);
    return NULL;
  }
  if (total % (uint64_t)block != 0) {
    throw_range(env, "readProcessBlocks: %llu bytes are not a whole number of %lld-byte blocks", (unsigned long long)total, (long long)block);
    return NULL;
  }
  uint64_t blocks = total / (uint64_t)block;
  if (digests && dlen < 32 * blocks) {
    throw_range(env, "readProcessBlocks: digests holds %zu bytes, %llu blocks need %llu", dlen, (unsigned long long)blocks, (unsigned long long)(32 * blocks));
    return NULL;
  }
  rjob_t *j = calloc(1, sizeof *j);
  if (!j || !(j->ranges = malloc((count ? (size_t)count : 1) * 2 * sizeof(uint64_t)))) {
    free(j);
    throw_sys(env, "readProcessBlocks", "malloc", ENOMEM);
    return NULL;
  }
  for (int64_t i = 0; i < 2 * count; i++) j->ranges[i] = (uint64_t)ranges[i];
  j->pid = (pid_t)pid;
  j->count = (size_t)count;
  j->dst = buf + offset;
  j->digests = digests;
  j->total = (size_t)total;
  j->block = (size_t)block;
  j->portable = opt_bool(env, argv[7], "portable"); /* else decided by execute(): cpuid, a VM exit under a hypervisor, off the loop too */
  napi_value fv;
  int64_t fifo = 0;
  if (opt_prop(env, argv[7], "fifoPriority", &fv) && !arg_int(env, fv, 1, 99, &fifo, "readProcessBlocks: opts.fifoPriority")) {
    rjob_free(env, j);
    return NULL;
  }
  j->fifo = (int)fifo;
  napi_value tv = NULL;
  if (opt_prop(env, argv[7], "timing", &tv)) {
    size_t tlen;
    if (!arg_f64array(env, tv, &j->timing, &tlen, "readProcessBlocks: opts.timing")) {
      rjob_free(env, j);
      return NULL;
    }
    if (tlen < 3) {
      rjob_free(env, j);
      throw_range(env, "readProcessBlocks: opts.timing holds %zu values, 3 are written", tlen);
      return NULL;
    }
  } else {
    tv = NULL;
  }
  return queue(env, j, argv[3], digests ? argv[6] : NULL, tv, opt_bool(env, argv[7], "ownThread"), "readProcessBlocks");
}

napi_value Sha256Blocks(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int64_t block;
  size_t len, dlen;
  uint8_t *data, *digests;
  if (!arg_bytes(env, argv[0], &data, &len, "sha256Blocks: data") || !arg_int(env, argv[1], 1, MAX_BLOCK, &block, "sha256Blocks: blockSize") ||
      !arg_bytes(env, argv[2], &digests, &dlen, "sha256Blocks: digests"))
    return NULL;
  if (len % (size_t)block != 0) {
    throw_range(env, "sha256Blocks: %zu bytes are not a whole number of %lld-byte blocks", len, (long long)block);
    return NULL;
  }
  if (dlen < 32 * (len / (size_t)block)) {
    throw_range(env, "sha256Blocks: digests holds %zu bytes, %zu blocks need %zu", dlen, len / (size_t)block, 32 * (len / (size_t)block));
    return NULL;
  }
  rjob_t *j = calloc(1, sizeof *j);
  if (!j) {
    throw_sys(env, "sha256Blocks", "malloc", ENOMEM);
    return NULL;
  }
  j->hash_only = 1;
  j->dst = data;
  j->digests = digests;
  j->total = len;
  j->block = (size_t)block;
  j->portable = opt_bool(env, argv[3], "portable");
  return queue(env, j, argv[0], argv[2], NULL, 0, "sha256Blocks");
}
