/*
 * thread_sched: the calling thread's scheduling policy set to SCHED_IDLE, for a thread whose
 * work may wait for every other runnable thread of the host (contract: proto/store/store-native.ts
 * threadIdle()).
 *
 *   threadIdle(): number   sched_setscheduler(0 = the calling thread, SCHED_IDLE); returns 0, or
 *        the errno of the refusal (the thread then keeps its policy)
 *
 * Why here: Node has no call for a thread's policy (os.setPriority sets a nice value, and a nice
 * value weighs a thread only against the threads of its own session when the kernel groups tasks
 * by session, kernel.sched_autogroup_enabled=1, while a SCHED_IDLE thread yields to the other
 * sessions' threads too: docs/performance.md, "`snapnet`"), and only the thread itself can name
 * itself without a thread id (a worker thread of Node does not know its own).
 *
 * Guarantees: only the calling thread changes (Linux applies sched_setscheduler(0, ...) to the
 * calling thread, not the process); a thread the call refuses is left as it was; never throws.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>

#include "addon.h"

napi_value ThreadIdle(napi_env env, napi_callback_info info) {
  (void)info;
  struct sched_param p = {.sched_priority = 0};
  int rc = sched_setscheduler(0, SCHED_IDLE, &p) == 0 ? 0 : errno;
  napi_value r;
  napi_create_int32(env, rc, &r);
  return r;
}
