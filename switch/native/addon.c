/*
 * addon: the module's registration in each environment (NAPI_MODULE_INIT), its per-environment
 * state (addon.h), and close(fd), the one call that touches the state of several files.
 *
 * What this addon is for (contract: switch/native-io.ts): only what plain Node cannot do well
 * lives in C: opening TAP devices, packet sockets and large-buffer UDP sockets, and moving many
 * frames/datagrams per event-loop wakeup (uv_poll + read loop, recvmmsg, sendmmsg with
 * UDP_SEGMENT). Everything is non-blocking; nothing here blocks the event loop. All switching
 * logic stays in TypeScript.
 *
 * Files: napi_util (errors, arguments), tap, packet, frame_write (TAP/packet writes), udp_sock
 * (UDP sockets and their per-socket state), udp_send (batched send, GSO), offload (segmenting,
 * coalescing, checksums) and offload_napi (its JS faces), poller/poller_read (batched reads),
 * bpf (the in-kernel data path's maps and test runs); zstd and cdc serve the snapshot store, not the
 * switch (chunk compression in the thread pool, the content-defined chunker's loop: their contract
 * is proto/store/store-native.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"
#include "send_arena.h"
#include "udp_sock.h"

addon_t *addon_get(napi_env env) {
  void *d = NULL;
  napi_get_instance_data(env, &d);
  return (addon_t *)d;
}

send_arena_t *addon_arena(napi_env env, const char *op) {
  addon_t *a = addon_get(env);
  if (!a->arena && !(a->arena = malloc(sizeof *a->arena))) throw_sys(env, op, "malloc", ENOMEM);
  return a->arena;
}

/* close(fd): stops the pollers on fd and forgets its socket state first, then closes it. */
napi_value Close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  addon_t *a = addon_get(env);
  poller_fd_closing(a, fd);
  udp_sock_forget(a, fd);
  if (close(fd) < 0 && errno != EINTR) {
    char op[64];
    snprintf(op, sizeof op, "close(%d)", fd);
    throw_sys(env, op, "close", errno);
    return NULL;
  }
  return NULL;
}

static void addon_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  addon_t *a = (addon_t *)data;
  /* Pollers still listed are finalized by their own finalizers (which unlink them). */
  for (size_t i = 0; i < a->nsocks; i++) free(a->socks[i]);
  free(a->socks);
  free(a->arena);
  free(a->rx_scratch);
  free(a);
}

NAPI_MODULE_INIT() {
  addon_t *a = calloc(1, sizeof *a);
  if (!a || napi_set_instance_data(env, a, addon_free, NULL) != napi_ok) {
    free(a);
    napi_throw_error(env, "ERR_NATIVE_IO", "vnsnap_io: cannot allocate addon state");
    return NULL;
  }
#define VNSNAP_EXPORT_ENTRY(js, c) {#js, NULL, c, NULL, NULL, NULL, napi_enumerable, NULL},
  napi_property_descriptor props[] = {VNSNAP_ENTRY_POINTS(VNSNAP_EXPORT_ENTRY)};
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_value version;
  if (napi_create_uint32(env, VNSNAP_IO_INTERFACE_VERSION, &version) != napi_ok || napi_set_named_property(env, exports, "interfaceVersion", version) != napi_ok) {
    napi_throw_error(env, "ERR_NATIVE_IO", "vnsnap_io: cannot export interfaceVersion");
    return NULL;
  }
  return exports;
}
