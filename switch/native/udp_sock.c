/*
 * udp_sock: opening UDP sockets and the per-socket state of udp_sock.h (identity-checked,
 * created at udpOpen, destroyed at close), with its JS views: udpSocketStats(fd) and the
 * test hook udpSetNoCheck(fd, on).
 */
#define _GNU_SOURCE
#include "udp_sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "napi_util.h"
#include "sockopt.h"

void udp_sock_forget(addon_t *a, int fd) {
  if (fd < 0 || (size_t)fd >= a->nsocks || !a->socks[fd]) return;
  free(a->socks[fd]);
  a->socks[fd] = NULL;
}

udp_sock_t *udp_sock_of(addon_t *a, int fd) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) return NULL;
  if ((size_t)fd < a->nsocks && a->socks[fd]) {
    udp_sock_t *s = a->socks[fd];
    if (s->dev == st.st_dev && s->ino == st.st_ino) return s;
    udp_sock_forget(a, fd); /* closed behind our back; fd now names another file */
  }
  if ((size_t)fd >= a->nsocks) {
    size_t n = a->nsocks ? a->nsocks : 64;
    while (n <= (size_t)fd) n *= 2;
    udp_sock_t **t = realloc(a->socks, n * sizeof *t);
    if (!t) return NULL;
    memset(t + a->nsocks, 0, (n - a->nsocks) * sizeof *t);
    a->socks = t;
    a->nsocks = n;
  }
  udp_sock_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->fd = fd;
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  a->socks[fd] = s;
  return s;
}

/* udpOpen(ip, port, opts?) -> { fd, port, gro }; opts.gro: enable UDP_GRO (`gro` says whether it worked). */
napi_value UdpOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int want_gro = opt_bool(env, argv[2], "gro");
  char ip[64];
  int64_t port;
  if (!arg_string(env, argv[0], ip, sizeof ip, NULL, "udpOpen: ip")) return NULL;
  if (!arg_int(env, argv[1], 0, 65535, &port, "udpOpen: port")) return NULL;
  char op[128];
  snprintf(op, sizeof op, "udpOpen(%s:%d)", ip, (int)port);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
    throw_io(env, "%s: not an IPv4 address", op);
    return NULL;
  }
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(env, op, "socket", errno);
    return NULL;
  }
  int one = 1;
  const char *step;
  /* No SO_REUSEADDR: UDP has no TIME_WAIT to wait out, and with it two switches could bind the
   * same port (even two ephemeral ones) and silently share its datagrams. A port in use is an
   * EADDRINUSE error naming it. */
  set_sock_bufs(fd);
  int gro = 0;
  if (want_gro) gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    step = "bind";
    goto fail;
  }
  socklen_t sl = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
    step = "getsockname";
    goto fail;
  }
  /* A new socket starts with new state, whatever an earlier owner of the number left. */
  addon_t *a = addon_get(env);
  udp_sock_forget(a, fd);
  (void)udp_sock_of(a, fd);
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_num_prop(env, res, "port", ntohs(sa.sin_port));
  set_bool_prop(env, res, "gro", gro);
  return res;
fail:
  return fail_close(env, fd, op, step);
}

/* The state of the socket at argv[0], or NULL after throwing. */
static udp_sock_t *sock_arg(napi_env env, napi_value v, const char *name) {
  int fd;
  if (!arg_fd(env, v, &fd)) return NULL;
  errno = 0;
  udp_sock_t *s = udp_sock_of(addon_get(env), fd);
  if (!s) {
    char op[64];
    snprintf(op, sizeof op, "%s(fd %d)", name, fd);
    throw_sys(env, op, "fstat", errno ? errno : ENOMEM);
  }
  return s;
}

/* udpSocketStats(fd) -> { gsoBroken, gsoMessages, splitMessages } of the socket fd names now. */
napi_value UdpSocketStats(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  udp_sock_t *s = sock_arg(env, argv[0], "udpSocketStats");
  if (!s) return NULL;
  napi_value res;
  napi_create_object(env, &res);
  set_bool_prop(env, res, "gsoBroken", s->gso_broken);
  set_num_prop(env, res, "gsoMessages", s->gso_msgs);
  set_num_prop(env, res, "splitMessages", s->split_msgs);
  return res;
}

/*
 * udpSetNoCheck(fd, on): SO_NO_CHECK (send without UDP checksums). The kernel refuses
 * UDP_SEGMENT on such a socket (EINVAL), which is how tests make GSO fail on loopback.
 */
napi_value UdpSetNoCheck(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  udp_sock_t *s = sock_arg(env, argv[0], "udpSetNoCheck");
  if (!s) return NULL;
  bool on = false;
  napi_get_value_bool(env, argv[1], &on);
  int v = on ? 1 : 0;
  if (setsockopt(s->fd, SOL_SOCKET, SO_NO_CHECK, &v, sizeof v) < 0) {
    char op[64];
    snprintf(op, sizeof op, "udpSetNoCheck(fd %d)", s->fd);
    throw_sys(env, op, "setsockopt SO_NO_CHECK", errno);
  }
  return NULL;
}
