/*
 * sched: one thread's scheduling policy set with one system call (contract: switch/native-io.ts
 * setThreadPolicy; used by agent/drivers/qemu/pause-boost.ts).
 *
 *   setThreadPolicy(tid: number, policy: 0 | 1, priority: number): void
 *        policy 1 is SCHED_FIFO at `priority` (1-99), 0 is SCHED_OTHER (priority must be 0);
 *        the thread's nice value is left as it is.
 *
 * Why here and not `chrt`: a VM's pause boost raises its QEMU's threads right before the cut's
 * `stop` and puts them back at its RESUME, on a host whose cores run the guests' vCPUs. Run as
 * `chrt` processes, even forked from a small shell at SCHED_FIFO, each change is a fork and an
 * exec at a realtime priority on those cores in the very milliseconds the stop needs them: QEMU's
 * trace showed the vCPU threads parked 2-22 ms after a boosted `stop` was dispatched against
 * 0.1-3 ms for the same QEMUs stopped unboosted (docs/performance.md, "The vCPUs' exit at a
 * boosted stop"). A system call takes microseconds and runs nothing else.
 *
 * vn_thread_start (for the addon's own threads: ram_read.c's stopped read, unix_sink.c's reader):
 * a detached thread created at SCHED_FIFO at `fifo` (1-99) where permitted — it must not wait
 * for a core to raise itself: inside a VM's pause the cores are QEMU's and the agents' realtime
 * threads' —, at its creator's policy where not (or when fifo is 0); 1 when a thread was made.
 *
 * Guarantees: synchronous, allocation-free; a refusal (EPERM without CAP_SYS_NICE, ESRCH for a
 * thread that is gone, EINVAL for a priority the policy does not take) is ERR_NATIVE_IO with the
 * errno's code and nothing changed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/types.h>

#include "addon.h"
#include "napi_util.h"

napi_value SetThreadPolicy(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int64_t tid, policy, prio;
  if (!arg_int(env, argv[0], 1, 0x7fffffff, &tid, "setThreadPolicy: tid") || !arg_int(env, argv[1], 0, 1, &policy, "setThreadPolicy: policy") ||
      !arg_int(env, argv[2], 0, 99, &prio, "setThreadPolicy: priority"))
    return NULL;
  struct sched_param sp = {.sched_priority = (int)prio};
  if (sched_setscheduler((pid_t)tid, policy == 1 ? SCHED_FIFO : SCHED_OTHER, &sp) < 0) {
    char op[64];
    snprintf(op, sizeof op, "setThreadPolicy(%lld)", (long long)tid);
    throw_sys(env, op, "sched_setscheduler", errno);
  }
  return NULL;
}

int vn_thread_start(void *(*fn)(void *), void *arg, int fifo, size_t stack_bytes) {
  for (int explicit_fifo = fifo > 0; explicit_fifo >= 0; explicit_fifo--) {
    pthread_attr_t attr;
    pthread_t t;
    if (pthread_attr_init(&attr) != 0) return 0;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, stack_bytes);
    if (explicit_fifo) {
      struct sched_param sp = {.sched_priority = fifo};
      pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
      pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
      pthread_attr_setschedparam(&attr, &sp);
    }
    int ok = pthread_create(&t, &attr, fn, arg) == 0;
    pthread_attr_destroy(&attr);
    if (ok) return 1;
  }
  return 0;
}
