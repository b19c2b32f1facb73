/*
 * unix_sink: a unix stream socket that takes one connection and keeps everything sent over it,
 * accepted and read on a thread of its own (contract: switch/native-io.ts; used by
 * agent/drivers/qemu/device-state.ts for a tracked capture's device state).
 *
 * Why: QEMU writes a stopped VM's device state (~0.6 MiB for the test guest, more than the
 * socket's 208 KiB send buffer) and reports the save completed only once every byte was taken
 * by the reader. Read on the agent's event loop, the save waited for that loop inside the VM's
 * pause — busy with the switch's drain, the stopped round's read settling and its other VM's cut —
 * and QEMU's traces showed 13 ms (median) from the start of the devices' save to its end, against
 * 1-2 ms with a reader of its own (docs/performance.md, branch `devstate`). Here a thread,
 * created at SCHED_FIFO where asked and permitted, sleeps in poll() until QEMU connects and then
 * reads at once; the loop only gets the bytes at the end.
 *
 *   unixSinkListen(path: string, opts?: { fifoPriority?: number, maxBytes?: number }): [handle, Promise<Buffer>]
 *        binds and listens at path (an existing socket file there is replaced) at the call, then
 *        on its thread accepts one connection and reads it to its end; the promise resolves with
 *        the bytes (a Buffer owning them) once the peer closed it. maxBytes (default 64 MiB) bounds
 *        what is kept: more rejects with ERR_NATIVE_IO.
 *   unixSinkClose(handle): ends a sink whose promise has not settled (it rejects with
 *        ERR_NATIVE_IO "closed"); nothing after it settled. Idempotent. The socket file is the
 *        caller's to remove.
 *
 * Guarantees: a bind or listen failure throws at the call (ERR_NATIVE_IO with the errno), nothing
 * left open; otherwise the promise settles exactly once, on the loop, and the thread has ended
 * by then (no thread outlives its settling, and the listening socket is closed by then).
 * The thread never touches JS values; the handle stays referenced until the settling.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"

#define DEFAULT_MAX_BYTES (64u << 20)
#define FIRST_CAP (1u << 20)

typedef struct {
  int lfd, efd;
  int fifo;
  size_t max;
  napi_threadsafe_function tsfn;
  napi_deferred deferred;
  napi_ref self_ref; /* the handle, kept until the settling */
  int settled;       /* on the loop only */
  /* the thread's result */
  uint8_t *data;
  size_t len, cap;
  int err;            /* errno of a failed call, 0 */
  const char *failed; /* the failed call's name, or a reason */
  int closed;         /* unixSinkClose() before the end */
  int too_big;
} sink_t;

/* Wait until fd is readable (1) or the sink was closed (0); -1 on a poll error. */
static int wait_readable(sink_t *s, int fd) {
  struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->efd, .events = POLLIN}};
  for (;;) {
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (p[1].revents) return 0;
    if (p[0].revents) return 1;
  }
}

static void read_all(sink_t *s) {
  int r = wait_readable(s, s->lfd);
  if (r <= 0) {
    if (r < 0) s->err = errno, s->failed = "poll";
    else s->closed = 1;
    return;
  }
  int c = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); /* non-blocking: a close() is seen between reads */
  if (c < 0) {
    s->err = errno, s->failed = "accept4";
    return;
  }
  for (;;) {
    if (s->len == s->cap) {
      if (s->cap >= s->max) {
        s->too_big = 1;
        break;
      }
      size_t cap = s->cap ? s->cap * 2 : FIRST_CAP;
      if (cap > s->max) cap = s->max;
      uint8_t *d = realloc(s->data, cap);
      if (!d) {
        s->err = ENOMEM, s->failed = "realloc";
        break;
      }
      s->data = d, s->cap = cap;
    }
    ssize_t n = read(c, s->data + s->len, s->cap - s->len);
    if (n > 0) {
      s->len += (size_t)n;
      continue;
    }
    if (n == 0) break; /* the peer closed it: the end */
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      s->err = errno, s->failed = "read";
      break;
    }
    r = wait_readable(s, c);
    if (r <= 0) {
      if (r < 0) s->err = errno, s->failed = "poll";
      else s->closed = 1;
      break;
    }
  }
  close(c);
}

static void free_data(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

/* On the loop: the promise settled, the fds closed, the handle let go. */
static void settle(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  sink_t *s = data;
  close(s->lfd), close(s->efd);
  s->lfd = s->efd = -1;
  if (!env) return; /* the environment is going away: the handle's finaliser frees the rest */
  s->settled = 1;
  napi_value v = NULL;
  if (s->err) {
    napi_reject_deferred(env, s->deferred, sys_error(env, "unixSink", s->failed, s->err));
  } else if (s->closed) {
    napi_reject_deferred(env, s->deferred, make_error(env, "ERR_NATIVE_IO", "unixSink: closed before the peer's end"));
  } else if (s->too_big) {
    char msg[128];
    snprintf(msg, sizeof msg, "unixSink: the peer sent more than %zu bytes", s->max);
    napi_reject_deferred(env, s->deferred, make_error(env, "ERR_NATIVE_IO", msg));
  } else if (s->len == 0 ? napi_create_buffer(env, 0, NULL, &v) == napi_ok : napi_create_external_buffer(env, s->len, s->data, free_data, NULL, &v) == napi_ok) {
    if (s->len) s->data = NULL; /* the Buffer owns it now */
    napi_resolve_deferred(env, s->deferred, v);
  } else {
    napi_reject_deferred(env, s->deferred, make_error(env, "ERR_NATIVE_IO", "unixSink: cannot make the Buffer"));
  }
  napi_delete_reference(env, s->self_ref);
  s->self_ref = NULL;
}

static void *sink_main(void *data) {
  sink_t *s = data;
  napi_threadsafe_function tsfn = s->tsfn;
  if (s->fifo) {
    /* Created at SCHED_FIFO where permitted; where not, it tries here (and stays as it is). */
    struct sched_param sp = {.sched_priority = s->fifo};
    if (sched_getscheduler(0) != SCHED_FIFO) sched_setscheduler(0, SCHED_FIFO, &sp);
  }
  read_all(s);
  napi_call_threadsafe_function(tsfn, s, napi_tsfn_blocking);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

static void finalize_sink(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  sink_t *s = data;
  free(s->data);
  free(s);
}

napi_value UnixSinkListen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  size_t plen;
  if (!arg_string(env, argv[0], path, sizeof path, &plen, "unixSinkListen: path")) return NULL;
  if (plen == 0) return throw_range(env, "unixSinkListen: path is empty"), NULL;
  int64_t fifo = 0, max = DEFAULT_MAX_BYTES;
  napi_value v;
  if (opt_prop(env, argv[1], "fifoPriority", &v) && !arg_int(env, v, 0, 99, &fifo, "unixSinkListen: opts.fifoPriority")) return NULL;
  if (opt_prop(env, argv[1], "maxBytes", &v) && !arg_int(env, v, 1, (int64_t)1 << 40, &max, "unixSinkListen: opts.maxBytes")) return NULL;

  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) return throw_sys(env, "unixSinkListen", "socket", errno), NULL;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, plen);
  unlink(path);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0) return fail_close(env, lfd, "unixSinkListen", "bind");
  if (listen(lfd, 1) != 0) return fail_close(env, lfd, "unixSinkListen", "listen");
  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) return fail_close(env, lfd, "unixSinkListen", "eventfd");

  sink_t *s = calloc(1, sizeof *s);
  if (!s) {
    close(efd);
    return fail_close(env, lfd, "unixSinkListen", "calloc");
  }
  s->lfd = lfd, s->efd = efd, s->fifo = (int)fifo, s->max = (size_t)max;
  napi_value handle, promise, res, out;
  if (napi_create_external(env, s, finalize_sink, NULL, &handle) != napi_ok) {
    close(efd), close(lfd), free(s);
    return throw_io(env, "unixSinkListen: cannot make the handle"), NULL;
  }
  /* From here the handle's finaliser owns s. */
  if (napi_create_reference(env, handle, 1, &s->self_ref) != napi_ok || napi_create_string_utf8(env, "unixSink", NAPI_AUTO_LENGTH, &res) != napi_ok ||
      napi_create_promise(env, &s->deferred, &promise) != napi_ok ||
      napi_create_threadsafe_function(env, NULL, NULL, res, 0, 1, NULL, NULL, NULL, settle, &s->tsfn) != napi_ok) {
    close(efd), close(lfd);
    s->lfd = s->efd = -1;
    if (s->self_ref) napi_delete_reference(env, s->self_ref), s->self_ref = NULL;
    return throw_io(env, "unixSinkListen: cannot set up the sink"), NULL;
  }
  if (!vn_thread_start(sink_main, s, s->fifo, 64 * 1024)) {
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    close(efd), close(lfd);
    s->lfd = s->efd = -1;
    napi_delete_reference(env, s->self_ref), s->self_ref = NULL;
    return throw_io(env, "unixSinkListen: cannot start its thread"), NULL;
  }
  if (napi_create_array_with_length(env, 2, &out) != napi_ok || napi_set_element(env, out, 0, handle) != napi_ok || napi_set_element(env, out, 1, promise) != napi_ok) return NULL;
  return out;
}

napi_value UnixSinkClose(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  void *p = NULL;
  if (!argv[0] || napi_get_value_external(env, argv[0], &p) != napi_ok || !p) return throw_type(env, "unixSinkClose: handle must be what unixSinkListen returned"), NULL;
  sink_t *s = p;
  if (!s->settled && s->efd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w; /* an eventfd write of 1 cannot fail short of overflow */
  }
  return NULL;
}
