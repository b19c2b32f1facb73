/*
 * poller: the JS poller object (createPoller and its start/stop/poll/stats), its life cycle
 * and the event-loop wakeups that read one batch and call onBatch. The rules it keeps are
 * in poller.h; the reads themselves are in poller_read.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "napi_util.h"
#include "poller.h"

static void on_handle_closed(uv_handle_t *h) { free(h); }

/* Stop watching (idempotent). Safe from inside onBatch. */
static void poller_stop(poller_t *p) {
  if (!p->h) return;
  uv_close((uv_handle_t *)p->h, on_handle_closed); /* stops the watcher now, frees later */
  p->h = NULL;
  uint32_t rc;
  napi_reference_unref(p->env, p->self_ref, &rc);
}

/* A persistent error (closed fd, deleted TAP device) or too many failing wakeups: stop. */
static void check_dead(poller_t *p, int after_pollerr) {
  int is_dead = p->consecutive_errors >= MAX_CONSECUTIVE_ERRORS;
  if (!is_dead && after_pollerr) {
    struct pollfd pf = {.fd = p->fd, .events = POLLIN, .revents = 0};
    int r = poll(&pf, 1, 0);
    if (r < 0 || (pf.revents & (POLLERR | POLLNVAL))) is_dead = 1;
  }
  if (is_dead) {
    p->dead = 1;
    poller_stop(p);
  }
}

static void deliver_async(poller_t *p, uint32_t n) {
  napi_env env = p->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value self = NULL, cb = NULL, arg, result;
  napi_get_reference_value(env, p->self_ref, &self);
  napi_get_reference_value(env, p->cb_ref, &cb);
  if (self && cb && napi_create_uint32(env, n, &arg) == napi_ok) {
    p->in_cb++;
    napi_status st = napi_make_callback(env, p->actx, self, cb, 1, &arg, &result);
    p->in_cb--;
    if (st != napi_ok) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value exc;
        if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  (void)events;
  poller_t *p = (poller_t *)h->data;
  if (!p || p->h != h) return; /* a handle already being closed */
  p->wakeups++;
  if (status < 0) {
    /* libuv saw POLLERR and stopped the watcher itself (status UV_EBADF). Read once to
     * deliver what is queued and to consume a socket error, then decide. */
    uint32_t n = poller_read_batch(p);
    if (n > 0) deliver_async(p, n);
    if (p->h != h) return; /* stopped from onBatch */
    check_dead(p, 1);
    if (p->h == h && uv_poll_start(h, UV_READABLE, on_poll) != 0) {
      p->dead = 1;
      poller_stop(p);
    }
    return;
  }
  uint32_t n = poller_read_batch(p);
  if (n > 0) deliver_async(p, n);
  if (p->h == h) check_dead(p, 0);
}

static poller_t *unwrap_poller(napi_env env, napi_value self_this, const char *method) {
  void *d = NULL;
  if (!self_this || napi_unwrap(env, self_this, &d) != napi_ok || !d) {
    throw_type(env, "Poller.%s called on an object that is not a poller", method);
    return NULL;
  }
  return (poller_t *)d;
}

static int poller_usable(napi_env env, poller_t *p, const char *method) {
  if (p->fd_closed) {
    throw_io(env, "poller(fd %d).%s: the fd was closed", p->fd, method);
    return 0;
  }
  if (p->dead) {
    throw_io(env, "poller(fd %d).%s: the fd failed for good: %s", p->fd, method,
             p->last_errno ? strerror(p->last_errno) : "persistent poll error");
    return 0;
  }
  return 1;
}

static napi_value PollerStart(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  poller_t *p = unwrap_poller(env, self_this, "start");
  if (!p) return NULL;
  if (p->h) return NULL;
  if (!poller_usable(env, p, "start")) return NULL;
  for (poller_t *q = p->addon->pollers; q; q = q->next) {
    if (q != p && q->fd == p->fd && q->h) {
      throw_io(env, "poller(fd %d).start: another poller is already watching this fd", p->fd);
      return NULL;
    }
  }
  uv_loop_t *loop = NULL;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
    throw_io(env, "poller(fd %d).start: no event loop", p->fd);
    return NULL;
  }
  uv_poll_t *h = calloc(1, sizeof *h);
  if (!h) {
    throw_sys(env, "poller.start", "calloc", ENOMEM);
    return NULL;
  }
  char op[64];
  snprintf(op, sizeof op, "poller(fd %d).start", p->fd);
  int r = uv_poll_init(loop, h, p->fd);
  if (r != 0) {
    free(h);
    throw_sys(env, op, "uv_poll_init", -r);
    return NULL;
  }
  h->data = p;
  r = uv_poll_start(h, UV_READABLE, on_poll);
  if (r != 0) {
    uv_close((uv_handle_t *)h, on_handle_closed);
    throw_sys(env, op, "uv_poll_start", -r);
    return NULL;
  }
  p->h = h;
  uint32_t rc;
  napi_reference_ref(env, p->self_ref, &rc);
  return NULL;
}

static napi_value PollerStop(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  poller_t *p = unwrap_poller(env, self_this, "stop");
  if (!p) return NULL;
  poller_stop(p);
  return NULL;
}

static napi_value PollerPoll(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  poller_t *p = unwrap_poller(env, self_this, "poll");
  if (!p) return NULL;
  /* A dead poller (device gone) still reads: it returns 0 and counts the error, so a
   * caller draining ports needs no special case. A closed fd is a caller bug: throw. */
  if (p->fd_closed && !poller_usable(env, p, "poll")) return NULL;
  if (p->in_cb) {
    throw_io(env, "poller(fd %d).poll: called from inside onBatch (it would overwrite the batch being handled)", p->fd);
    return NULL;
  }
  uint32_t n = poller_read_batch(p);
  if (n > 0) {
    napi_value cb = NULL, arg, result;
    napi_get_reference_value(env, p->cb_ref, &cb);
    if (cb) {
      napi_create_uint32(env, n, &arg);
      p->in_cb++;
      napi_status st = napi_call_function(env, self_this, cb, 1, &arg, &result);
      p->in_cb--;
      if (st != napi_ok) return NULL; /* the exception propagates to poll()'s caller */
    }
  }
  napi_value res;
  napi_create_uint32(env, n, &res);
  return res;
}

static napi_value PollerStats(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  poller_t *p = unwrap_poller(env, self_this, "stats");
  if (!p) return NULL;
  napi_value res;
  napi_create_object(env, &res);
  set_bool_prop(env, res, "active", p->h != NULL);
  set_bool_prop(env, res, "dead", p->dead);
  set_bool_prop(env, res, "closed", p->fd_closed);
  set_num_prop(env, res, "wakeups", p->wakeups);
  set_num_prop(env, res, "batches", p->batches);
  set_num_prop(env, res, "frames", p->frames);
  set_num_prop(env, res, "truncated", p->truncated);
  set_num_prop(env, res, "errors", p->errors);
  set_num_prop(env, res, "gsoDrops", p->gso_drops);
  set_num_prop(env, res, "groDropped", p->gro_dropped);
  if (p->last_errno) {
    char msg[160];
    const char *name = strerrorname_np(p->last_errno);
    snprintf(msg, sizeof msg, "%s (%s)", strerror(p->last_errno), name ? name : "?");
    set_str_prop(env, res, "lastError", msg);
  } else {
    napi_value nul;
    napi_get_null(env, &nul);
    napi_set_named_property(env, res, "lastError", nul);
  }
  return res;
}

/* Frees the native state of a poller that is not (or no longer) listed or started. */
static void poller_free(napi_env env, poller_t *p) {
  if (p->self_ref) napi_delete_reference(env, p->self_ref);
  if (p->cb_ref) napi_delete_reference(env, p->cb_ref);
  if (p->actx) napi_async_destroy(env, p->actx);
  free(p->msgs);
  free(p->iov);
  free(p->addrs);
  free(p->ctrl);
  free(p->ents);
  free(p);
}

static void poller_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  poller_t *p = (poller_t *)data;
  if (p->h) {
    /* Only at environment teardown: a started poller is strongly referenced. */
    p->h->data = NULL;
    uv_close((uv_handle_t *)p->h, on_handle_closed);
    p->h = NULL;
  }
  for (poller_t **pp = &p->addon->pollers; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  poller_free(env, p);
}

/* The native buffers of a new poller (recvmmsg headers, GRO control/entries) and this
 * environment's read scratch. Returns 0 when out of memory. */
static int poller_alloc(poller_t *p) {
  addon_t *a = p->addon;
  if (!a->rx_scratch && !(a->rx_scratch = malloc(RX_SCRATCH_BYTES))) return 0;
  if (p->gro) {
    p->ctrl = calloc((size_t)p->max_batch, GRO_CTRL_LEN);
    p->ents = calloc(GRO_MAX_ENTS, sizeof *p->ents);
    if (!p->ctrl || !p->ents) return 0;
  }
  if (p->kind == KIND_UDP) {
    p->msgs = calloc((size_t)p->max_batch, sizeof *p->msgs);
    p->iov = calloc((size_t)p->max_batch, sizeof *p->iov);
    p->addrs = calloc((size_t)p->max_batch, sizeof *p->addrs);
    if (!p->msgs || !p->iov || !p->addrs) return 0;
    for (uint32_t j = 0; j < p->max_batch; j++) {
      p->iov[j].iov_base = p->slab + (size_t)j * p->slot + p->headroom;
      p->iov[j].iov_len = p->slot - p->headroom;
      p->msgs[j].msg_hdr.msg_name = &p->addrs[j];
      p->msgs[j].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
      p->msgs[j].msg_hdr.msg_iov = &p->iov[j];
      p->msgs[j].msg_hdr.msg_iovlen = 1;
    }
  }
  return 1;
}

/*
 * createPoller(fd, kind, slab, slotSize, headroom, maxBatch, lens, ips, ports, onBatch, opts?)
 * kind 'vnet': a TAP opened with vnetHdr; opts.meta (Buffer, 10 bytes per frame) receives each
 * frame's virtio_net_hdr (all zero unless it is a TCP super-frame; partial checksums of single
 * frames are completed). kind 'udp' with opts.gro: the socket has UDP_GRO; each received buffer
 * is split into entries (see groSplit): entry i at slab[offs[i] .. + lens[i]), standing for
 * segs[i] datagrams, its virtio_net_hdr in meta; lens/ips/ports/segs/meta hold offs.length
 * entries, and onBatch(count) counts entries.
 */
napi_value CreatePoller(napi_env env, napi_callback_info info) {
  GET_ARGS(11);
  int fd;
  char kind[16];
  uint8_t *slab;
  size_t slab_len, nlens, nips, nports;
  int64_t slot, headroom, max_batch;
  uint32_t *lens, *ips, *ports;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_string(env, argv[1], kind, sizeof kind, NULL, "createPoller: kind")) return NULL;
  int k;
  if (strcmp(kind, "frames") == 0) k = KIND_FRAMES;
  else if (strcmp(kind, "udp") == 0) k = KIND_UDP;
  else if (strcmp(kind, "vnet") == 0) k = KIND_VNET;
  else {
    throw_type(env, "createPoller: kind must be 'frames', 'vnet' or 'udp', got '%s'", kind);
    return NULL;
  }
  if (!arg_bytes(env, argv[2], &slab, &slab_len, "createPoller: slab")) return NULL;
  if (!arg_int(env, argv[3], 1, 1 << 20, &slot, "createPoller: slotSize")) return NULL;
  if (!arg_int(env, argv[4], 0, slot - 1, &headroom, "createPoller: headroom (< slotSize)")) return NULL;
  if (!arg_int(env, argv[5], 1, MAX_BATCH, &max_batch, "createPoller: maxBatch")) return NULL;
  if (!arg_u32array(env, argv[6], &lens, &nlens, "createPoller: lens")) return NULL;
  if (!arg_u32array(env, argv[7], &ips, &nips, "createPoller: ips")) return NULL;
  if (!arg_u32array(env, argv[8], &ports, &nports, "createPoller: ports")) return NULL;
  if (!arg_function(env, argv[9], "createPoller: onBatch")) return NULL;
  if ((size_t)slot * (size_t)max_batch > slab_len) {
    throw_range(env, "createPoller: slab (%zu bytes) is smaller than maxBatch * slotSize (%lld)", slab_len,
                (long long)(slot * max_batch));
    return NULL;
  }
  if (nlens < (size_t)max_batch || (k == KIND_UDP && (nips < (size_t)max_batch || nports < (size_t)max_batch))) {
    throw_range(env, "createPoller: lens%s must have at least maxBatch (%lld) elements",
                k == KIND_UDP ? ", ips and ports" : "", (long long)max_batch);
    return NULL;
  }
  int gro = k == KIND_UDP && opt_bool(env, argv[10], "gro");
  uint8_t *meta = NULL;
  size_t meta_len = 0, noffs = 0, nsegs = 0;
  uint32_t *offs = NULL, *segs = NULL;
  napi_value v_meta = NULL, v_offs = NULL, v_segs = NULL;
  if (k == KIND_VNET || gro) {
    if (!opt_prop(env, argv[10], "meta", &v_meta) || !arg_bytes(env, v_meta, &meta, &meta_len, "createPoller: opts.meta")) {
      if (!v_meta) throw_type(env, "createPoller: opts.meta must be a Buffer");
      return NULL;
    }
  }
  uint32_t max_entries = (uint32_t)max_batch;
  if (gro) {
    if (!opt_prop(env, argv[10], "offs", &v_offs) || !arg_u32array(env, v_offs, &offs, &noffs, "createPoller: opts.offs")) {
      if (!v_offs) throw_type(env, "createPoller: opts.offs must be a Uint32Array");
      return NULL;
    }
    if (!opt_prop(env, argv[10], "segs", &v_segs) || !arg_u32array(env, v_segs, &segs, &nsegs, "createPoller: opts.segs")) {
      if (!v_segs) throw_type(env, "createPoller: opts.segs must be a Uint32Array");
      return NULL;
    }
    max_entries = (uint32_t)noffs;
    if (max_entries < (uint32_t)max_batch || nsegs < max_entries || nlens < max_entries || nips < max_entries || nports < max_entries) {
      throw_range(env, "createPoller: with gro, offs must hold at least maxBatch entries and lens/ips/ports/segs at least offs.length");
      return NULL;
    }
  }
  if (meta && meta_len < (size_t)max_entries * OFL_VNET_HDR_LEN) {
    throw_range(env, "createPoller: opts.meta must hold %u * 10 bytes", max_entries);
    return NULL;
  }
  char op[64];
  snprintf(op, sizeof op, "createPoller(fd %d)", fd);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    throw_sys(env, op, "fstat", errno);
    return NULL;
  }
  int is_socket = S_ISSOCK(st.st_mode);
  if (k == KIND_UDP && !is_socket) {
    throw_io(env, "%s: kind 'udp' needs a socket", op);
    return NULL;
  }

  poller_t *p = calloc(1, sizeof *p);
  if (!p) {
    throw_sys(env, op, "calloc", ENOMEM);
    return NULL;
  }
  p->env = env;
  p->addon = addon_get(env);
  p->fd = fd;
  p->kind = k;
  p->is_socket = is_socket;
  p->slab = slab;
  p->slot = (uint32_t)slot;
  p->headroom = (uint32_t)headroom;
  p->max_batch = (uint32_t)max_batch;
  p->lens = lens;
  p->ips = ips;
  p->ports = ports;
  p->meta = meta;
  p->offs = offs;
  p->segs = segs;
  p->gro = gro;
  p->max_entries = max_entries;
  if (!poller_alloc(p)) {
    poller_free(env, p);
    throw_sys(env, op, "calloc", ENOMEM);
    return NULL;
  }

  napi_value obj, keep;
  napi_create_object(env, &obj);
  /* keep = [slab, lens, ips, ports, onBatch, meta, offs, segs], a hidden (non-enumerable) property. */
  napi_create_array_with_length(env, 8, &keep);
  if (v_meta) napi_set_element(env, keep, 5, v_meta);
  if (v_offs) napi_set_element(env, keep, 6, v_offs);
  if (v_segs) napi_set_element(env, keep, 7, v_segs);
  napi_set_element(env, keep, 0, argv[2]);
  napi_set_element(env, keep, 1, argv[6]);
  napi_set_element(env, keep, 2, argv[7]);
  napi_set_element(env, keep, 3, argv[8]);
  napi_set_element(env, keep, 4, argv[9]);
  napi_property_descriptor props[] = {
      {"_keep", NULL, NULL, NULL, NULL, keep, napi_default, NULL},
      {"start", NULL, PollerStart, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, PollerStop, NULL, NULL, NULL, napi_default, NULL},
      {"poll", NULL, PollerPoll, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, PollerStats, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, obj, sizeof props / sizeof props[0], props) != napi_ok) goto fail_free;
  if (napi_create_reference(env, argv[9], 0, &p->cb_ref) != napi_ok) goto fail_free;
  if (napi_create_reference(env, obj, 0, &p->self_ref) != napi_ok) goto fail_free;
  {
    napi_value resource, name;
    napi_create_object(env, &resource);
    napi_create_string_utf8(env, "vnsnap_io.Poller", NAPI_AUTO_LENGTH, &name);
    if (napi_async_init(env, resource, name, &p->actx) != napi_ok) goto fail_free;
  }
  if (napi_wrap(env, obj, p, poller_finalize, NULL, NULL) != napi_ok) goto fail_free;
  p->next = p->addon->pollers;
  p->addon->pollers = p;
  return obj;

fail_free:
  poller_free(env, p);
  {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) throw_io(env, "%s: internal N-API failure", op);
  }
  return NULL;
}


void poller_fd_closing(addon_t *a, int fd) {
  for (poller_t *q = a->pollers; q; q = q->next) {
    if (q->fd == fd && !q->fd_closed) {
      poller_stop(q);
      q->fd_closed = 1;
    }
  }
}
