/*
 * vnsnap_io: the native I/O addon of the vnsnap switch (contract: switch/native-io.ts).
 *
 * Only what plain Node cannot do well lives here: opening TAP devices, packet sockets and
 * large-buffer UDP sockets, and moving many frames/datagrams per event-loop wakeup
 * (uv_poll + read loop, recvmmsg, sendmmsg). Everything is non-blocking; nothing here
 * blocks the event loop.
 *
 * Errors: every failing system call throws a JS Error with code 'ERR_NATIVE_IO', a message
 * "<op>(<subject>): <syscall>: <strerror>", and the extra properties `errno` (negative, as
 * Node does), `errnoCode` ('ENODEV', ...) and `syscall`. Bad argument types throw a
 * TypeError/RangeError with code 'ERR_INVALID_ARGUMENT'.
 *
 * Pollers (createPoller):
 * - The uv_poll_t handle exists only while the poller is started: start() allocates and
 *   initialises one, stop() uv_close()s it. libuv's uv_poll_stop/uv_close remove the fd
 *   number from epoll; doing that while the number still belongs to us (not after a later
 *   close + reuse of the number by some other socket) is why handles are never kept around.
 * - close(fd) from this addon stops every poller on that fd BEFORE closing it; closing a
 *   polled fd behind the addon's back (fs.closeSync) is not supported.
 * - While started, the poller object holds a strong reference to itself (so a started poller
 *   is never garbage collected); the slab, lens/ips/ports arrays and the callback are kept
 *   alive by a hidden property of the poller object. stop() turns the self-reference weak,
 *   so an unreachable stopped poller (and everything it holds) is collected; its finalizer
 *   frees the native state. A callback that captures its own poller therefore leaks nothing.
 * - On each wakeup one batch (up to maxBatch frames) is read; the rest waits for the next
 *   loop turn (the fd is level-triggered), so one busy port cannot starve the others.
 * - Read errors other than EAGAIN end the batch and are counted (stats()); they never throw
 *   from a wakeup. When libuv reports POLLERR (it stops the watcher itself) the error is
 *   consumed by a read; if the fd is still in an error state afterwards (a TAP whose device
 *   was deleted, a closed fd) the poller stops for good (stats().dead), otherwise (a packet
 *   socket whose link went down: ENETDOWN once) it keeps polling. start() on a dead poller
 *   throws; poll() on it still tries to read (and returns 0).
 * - Frames longer than the slot (slotSize - headroom) are dropped and counted as truncated.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "offload.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef TUN_F_CSUM
#define TUN_F_CSUM 0x01
#define TUN_F_TSO4 0x02
#define TUN_F_TSO6 0x04
#endif

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define SOCK_BUF_BYTES (4 * 1024 * 1024)
#define MAX_BATCH 1024
#define SEND_CHUNK 256
/* A wakeup whose reads fail this many times in a row (no frame read) stops the poller. */
#define MAX_CONSECUTIVE_ERRORS 64

/* Scratch tail for TAP reads: a frame longer than the slot spills here and is detected
 * (and dropped) instead of being silently truncated. Contents are never used. */
static uint8_t g_scratch[128 * 1024];

/* ------------------------------------------------------------------------------------ */
/* errors                                                                               */

static napi_value make_error(napi_env env, const char *code, const char *msg) {
  napi_value c, m, e;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &e);
  return e;
}

static void set_str_prop(napi_env env, napi_value obj, const char *key, const char *val) {
  napi_value v;
  if (napi_create_string_utf8(env, val, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

static void set_num_prop(napi_env env, napi_value obj, const char *key, double val) {
  napi_value v;
  if (napi_create_double(env, val, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

static void set_bool_prop(napi_env env, napi_value obj, const char *key, int val) {
  napi_value v;
  if (napi_get_boolean(env, val != 0, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

/* "<op>: <syscall>: <strerror>", code ERR_NATIVE_IO, errno/errnoCode/syscall properties. */
static napi_value sys_error(napi_env env, const char *op, const char *syscall_name, int err) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s: %s", op, syscall_name, strerror(err));
  napi_value e = make_error(env, "ERR_NATIVE_IO", msg);
  set_num_prop(env, e, "errno", -err);
  const char *name = strerrorname_np(err);
  if (name) set_str_prop(env, e, "errnoCode", name);
  set_str_prop(env, e, "syscall", syscall_name);
  return e;
}

static void throw_sys(napi_env env, const char *op, const char *syscall_name, int err) {
  napi_throw(env, sys_error(env, op, syscall_name, err));
}

static void throw_io(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void throw_io(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw(env, make_error(env, "ERR_NATIVE_IO", msg));
}

static void throw_type(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void throw_type(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "ERR_INVALID_ARGUMENT", msg);
}

static void throw_range(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void throw_range(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_range_error(env, "ERR_INVALID_ARGUMENT", msg);
}

/* ------------------------------------------------------------------------------------ */
/* argument helpers: each returns 1 on success, or throws and returns 0                 */

static int arg_string(napi_env env, napi_value v, char *buf, size_t size, size_t *len_out, const char *what) {
  napi_valuetype t;
  size_t len = 0;
  if (!v || napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    throw_type(env, "%s must be a string", what);
    return 0;
  }
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (len >= size) {
    throw_range(env, "%s is too long (%zu bytes)", what, len);
    return 0;
  }
  napi_get_value_string_utf8(env, v, buf, size, &len);
  if (strlen(buf) != len) {
    throw_type(env, "%s must not contain NUL characters", what);
    return 0;
  }
  if (len_out) *len_out = len;
  return 1;
}

static int arg_int(napi_env env, napi_value v, int64_t lo, int64_t hi, int64_t *out, const char *what) {
  napi_valuetype t;
  double d;
  if (!v || napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    throw_type(env, "%s must be a number", what);
    return 0;
  }
  napi_get_value_double(env, v, &d);
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) {
    throw_range(env, "%s must be an integer in [%lld, %lld], got %g", what, (long long)lo, (long long)hi, d);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

static int arg_fd(napi_env env, napi_value v, int *fd) {
  int64_t x;
  if (!arg_int(env, v, 0, INT32_MAX, &x, "fd")) return 0;
  *fd = (int)x;
  return 1;
}

static int arg_u32array(napi_env env, napi_value v, uint32_t **data, size_t *len, const char *what) {
  bool is;
  napi_typedarray_type type;
  void *p = NULL;
  size_t n = 0;
  if (!v || napi_is_typedarray(env, v, &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, v, &type, &n, &p, NULL, NULL) != napi_ok || type != napi_uint32_array) {
    throw_type(env, "%s must be a Uint32Array", what);
    return 0;
  }
  *data = (uint32_t *)p;
  *len = n;
  return 1;
}

static int arg_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len, const char *what) {
  bool is = false;
  void *p = NULL;
  size_t n = 0;
  if (!v || napi_is_buffer(env, v, &is) != napi_ok || !is || napi_get_buffer_info(env, v, &p, &n) != napi_ok) {
    throw_type(env, "%s must be a Buffer", what);
    return 0;
  }
  *data = (uint8_t *)p;
  *len = n;
  return 1;
}

static int arg_array(napi_env env, napi_value v, uint32_t *len, const char *what) {
  bool is = false;
  if (!v || napi_is_array(env, v, &is) != napi_ok || !is) {
    throw_type(env, "%s must be an array", what);
    return 0;
  }
  napi_get_array_length(env, v, len);
  return 1;
}

static int arg_function(napi_env env, napi_value v, const char *what) {
  napi_valuetype t;
  if (!v || napi_typeof(env, v, &t) != napi_ok || t != napi_function) {
    throw_type(env, "%s must be a function", what);
    return 0;
  }
  return 1;
}

#define GET_ARGS(n)                                                      \
  size_t argc = (n);                                                     \
  napi_value argv[(n)] = {0};                                            \
  napi_value self_this = NULL;                                           \
  if (napi_get_cb_info(env, info, &argc, argv, &self_this, NULL) != napi_ok) return NULL; \
  for (size_t i_ = argc; i_ < (n); i_++) argv[i_] = NULL;                \
  (void)self_this;

/* ------------------------------------------------------------------------------------ */
/* per-environment state: the pollers, so close(fd) can stop the ones on that fd          */

struct poller;
typedef struct addon {
  struct poller *pollers;
} addon_t;

static addon_t *get_addon(napi_env env) {
  void *d = NULL;
  napi_get_instance_data(env, &d);
  return (addon_t *)d;
}

/* ------------------------------------------------------------------------------------ */

static void set_sock_bufs(int fd) {
  int bytes = SOCK_BUF_BYTES;
  /* We run as root: the FORCE variants ignore net.core.{r,w}mem_max. */
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

static int opt_bool(napi_env env, napi_value opts, const char *key) {
  napi_valuetype t;
  if (!opts || napi_typeof(env, opts, &t) != napi_ok || t != napi_object) return 0;
  bool has = false;
  if (napi_has_named_property(env, opts, key, &has) != napi_ok || !has) return 0;
  napi_value v;
  bool b = false;
  if (napi_get_named_property(env, opts, key, &v) != napi_ok || napi_get_value_bool(env, v, &b) != napi_ok) return 0;
  return b;
}

/*
 * tapOpen(name, opts?) -> { fd, name, vnetHdr, offloads }
 * opts.vnetHdr: IFF_VNET_HDR (every frame read/written is prefixed by a 10-byte
 * virtio_net_hdr) and TUNSETOFFLOAD(CSUM|TSO4|TSO6) (`offloads` says whether that worked).
 */
static napi_value TapOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char name[256];
  size_t len = 0;
  if (!arg_string(env, argv[0], name, sizeof name, &len, "tapOpen: name")) return NULL;
  int vnet = opt_bool(env, argv[1], "vnetHdr");
  char op[300];
  snprintf(op, sizeof op, "tapOpen(%s)", name);
  if (len >= IFNAMSIZ) {
    throw_io(env, "%s: interface name longer than %d bytes", op, IFNAMSIZ - 1);
    return NULL;
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    throw_sys(env, op, "open /dev/net/tun", errno);
    return NULL;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name, len);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    throw_sys(env, op, "ioctl TUNSETIFF", e);
    return NULL;
  }
  int offloads = 0;
  if (vnet) {
    int sz = OFL_VNET_HDR_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
      int e = errno;
      close(fd);
      throw_sys(env, op, "ioctl TUNSETVNETHDRSZ", e);
      return NULL;
    }
    offloads = ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) == 0;
  }
  ifr.ifr_name[IFNAMSIZ - 1] = 0;
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_str_prop(env, res, "name", ifr.ifr_name);
  set_bool_prop(env, res, "vnetHdr", vnet);
  set_bool_prop(env, res, "offloads", offloads);
  return res;
}

/*
 * packetOpen(ifname) -> { fd, ifindex }
 *
 * CALLER'S DUTY: on veth and TAP kernel sides (and most NICs) the kernel hands a packet
 * socket 64 KiB GSO super-frames with partial checksums unless segmentation/checksum
 * offloads are off on that interface: run `ethtool -K IF tx off tso off gso off` (and, so
 * VLAN tags are not moved out of the frame into metadata, `rxvlan off txvlan off`) before
 * using the port. This addon does not shell out.
 */
static napi_value PacketOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  char name[256];
  size_t len = 0;
  if (!arg_string(env, argv[0], name, sizeof name, &len, "packetOpen: ifname")) return NULL;
  char op[300];
  snprintf(op, sizeof op, "packetOpen(%s)", name);
  if (len == 0 || len >= IFNAMSIZ) {
    throw_io(env, "%s: invalid interface name (1 to %d bytes)", op, IFNAMSIZ - 1);
    return NULL;
  }
  errno = 0;
  unsigned idx = if_nametoindex(name);
  if (idx == 0) {
    throw_sys(env, op, "if_nametoindex", errno ? errno : ENODEV);
    return NULL;
  }
  /* Protocol 0 at creation: nothing is queued until bind() (with ETH_P_ALL) on this ifindex,
   * so no frame of another interface slips in between socket() and bind(). */
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(env, op, "socket AF_PACKET", errno);
    return NULL;
  }
  int one = 1, zero = 0;
  const char *step = NULL;
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) {
    step = "setsockopt PACKET_IGNORE_OUTGOING";
    goto fail;
  }
  if (setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, &zero, sizeof zero) < 0) {
    step = "setsockopt PACKET_AUXDATA";
    goto fail;
  }
  struct packet_mreq mr;
  memset(&mr, 0, sizeof mr);
  mr.mr_ifindex = (int)idx;
  mr.mr_type = PACKET_MR_PROMISC;
  if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
    step = "setsockopt PACKET_ADD_MEMBERSHIP";
    goto fail;
  }
  set_sock_bufs(fd);
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)idx;
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
    step = "bind";
    goto fail;
  }
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_num_prop(env, res, "ifindex", idx);
  return res;
fail: {
  int e = errno;
  close(fd);
  throw_sys(env, op, step, e);
  return NULL;
}
}

/* udpOpen(ip, port, opts?) -> { fd, port, gro }; opts.gro: enable UDP_GRO (`gro` says whether it worked). */
static napi_value UdpOpen(napi_env env, napi_callback_info info) {
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
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_num_prop(env, res, "port", ntohs(sa.sin_port));
  set_bool_prop(env, res, "gro", gro);
  return res;
fail: {
  int e = errno;
  close(fd);
  throw_sys(env, op, step, e);
  return NULL;
}
}

/* writeFrames(fd, frames, count) -> number written */
static napi_value WriteFrames(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  uint32_t n;
  int64_t count;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFrames: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFrames: count")) return NULL;
  uint32_t written = 0;
  for (uint32_t i = 0; i < (uint32_t)count; i++) {
    napi_value el;
    uint8_t *data;
    size_t len;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok) return NULL;
    if (!arg_bytes(env, el, &data, &len, "writeFrames: frames[i]")) return NULL;
    ssize_t w;
    do {
      w = write(fd, data, len);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) break;
      char op[64];
      snprintf(op, sizeof op, "writeFrames(fd %d)", fd);
      napi_value err = sys_error(env, op, "write", e);
      set_num_prop(env, err, "written", written);
      napi_throw(env, err);
      return NULL;
    }
    written++;
  }
  napi_value res;
  napi_create_uint32(env, written, &res);
  return res;
}

/*
 * writeFramesVnet(fd, frames, count, metas?) -> number written: like writeFrames, for a TAP
 * opened with vnetHdr; frame i goes out behind metas[10*i .. 10*i+10) (a virtio_net_hdr), or
 * behind a zero header when metas is null/undefined.
 */
static napi_value WriteFramesVnet(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  uint32_t n;
  int64_t count;
  uint8_t *metas = NULL;
  size_t metas_len = 0;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFramesVnet: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFramesVnet: count")) return NULL;
  napi_valuetype mt = napi_undefined;
  if (argv[3]) napi_typeof(env, argv[3], &mt);
  if (mt != napi_undefined && mt != napi_null) {
    if (!arg_bytes(env, argv[3], &metas, &metas_len, "writeFramesVnet: metas")) return NULL;
    if (metas_len < (size_t)count * OFL_VNET_HDR_LEN) {
      throw_range(env, "writeFramesVnet: metas holds %zu bytes, %lld frames need %lld", metas_len, (long long)count, (long long)count * OFL_VNET_HDR_LEN);
      return NULL;
    }
  }
  static const uint8_t zero[OFL_VNET_HDR_LEN] = {0};
  uint32_t written = 0;
  for (uint32_t i = 0; i < (uint32_t)count; i++) {
    napi_value el;
    uint8_t *data;
    size_t len;
    if (napi_get_element(env, argv[1], i, &el) != napi_ok) return NULL;
    if (!arg_bytes(env, el, &data, &len, "writeFramesVnet: frames[i]")) return NULL;
    struct iovec v[2] = {{(void *)(metas ? metas + (size_t)i * OFL_VNET_HDR_LEN : zero), OFL_VNET_HDR_LEN}, {data, len}};
    ssize_t w;
    do {
      w = writev(fd, v, 2);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) break;
      if (e == EINVAL) continue; /* a header the kernel refuses: drop this frame only */
      char op[64];
      snprintf(op, sizeof op, "writeFramesVnet(fd %d)", fd);
      napi_value err = sys_error(env, op, "writev", e);
      set_num_prop(env, err, "written", written);
      napi_throw(env, err);
      return NULL;
    }
    written++;
  }
  napi_value res;
  napi_create_uint32(env, written, &res);
  return res;
}

/* ---- udpSend: sendmmsg with per-entry segmentation and UDP_SEGMENT ---------------------- */

/* Only the main thread's environment uses these (the switch runs on one thread). */
#define ARENA_SEGS 1024
#define ARENA_MSGS 512
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000
static uint8_t g_hdr_arena[ARENA_SEGS * OFL_SEG_HDR_MAX];
static ofl_seg_t g_segs[ARENA_SEGS];
#define IOV_CAP (ARENA_SEGS * 2 + ARENA_MSGS)
static struct iovec g_iov[IOV_CAP];
static struct mmsghdr g_msgs[ARENA_MSGS];
static struct sockaddr_in g_sa[ARENA_MSGS];
static union {
  char buf[CMSG_SPACE(sizeof(uint16_t))];
  struct cmsghdr align;
} g_ctl[ARENA_MSGS];
static uint32_t g_msg_entry[ARENA_MSGS], g_msg_nseg[ARENA_MSGS];
/* run: the message carries consecutive ordinary entries (segment j = entry g_msg_entry + j),
 * one iovec each; otherwise the segments of one super-frame, two iovecs each. */
static uint8_t g_msg_run[ARENA_MSGS];
static uint32_t g_msg_seg_size[ARENA_MSGS], g_msg_bytes[ARENA_MSGS], g_msg_last[ARENA_MSGS];
/* fds whose sockets refused UDP_SEGMENT: segments go out one datagram each. */
static uint8_t g_gso_broken[4096];

typedef struct {
  int fd;
  uint32_t nmsg, niov, nseg;
  uint32_t *segs_out; /* may be NULL */
  int stopped;        /* EAGAIN/ENOBUFS: nothing more goes out in this call */
  uint32_t stop_entry;
  int err;            /* another errno: thrown by the caller */
  uint32_t datagrams;
} sendctx_t;

static int gso_ok(int fd) { return !(fd >= 0 && fd < (int)sizeof g_gso_broken && g_gso_broken[fd]); }

static void credit_n(sendctx_t *c, uint32_t m, uint32_t k) {
  if (c->segs_out) {
    if (g_msg_run[m])
      for (uint32_t j = 0; j < k; j++) c->segs_out[g_msg_entry[m] + j] += 1;
    else
      c->segs_out[g_msg_entry[m]] += k;
  }
  c->datagrams += k;
}

static void credit(sendctx_t *c, uint32_t m) { credit_n(c, m, g_msg_nseg[m]); }

/* Send one UDP_SEGMENT message's segments as separate datagrams (after the kernel refused GSO). */
static int send_split(sendctx_t *c, uint32_t m) {
  struct msghdr *h = &g_msgs[m].msg_hdr;
  uint32_t per = g_msg_run[m] ? 1 : 2;
  uint32_t k = (uint32_t)h->msg_iovlen / per;
  struct mmsghdr mm[GSO_MAX_SEGS];
  memset(mm, 0, sizeof mm);
  for (uint32_t j = 0; j < k; j++) {
    mm[j].msg_hdr.msg_name = h->msg_name;
    mm[j].msg_hdr.msg_namelen = h->msg_namelen;
    mm[j].msg_hdr.msg_iov = h->msg_iov + per * j;
    mm[j].msg_hdr.msg_iovlen = per;
  }
  uint32_t done = 0;
  while (done < k) {
    int r = sendmmsg(c->fd, mm + done, k - done, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      credit_n(c, m, done);
      return e;
    }
    done += (uint32_t)r;
  }
  credit(c, m);
  return 0;
}

static void send_flush(sendctx_t *c) {
  uint32_t m = 0;
  while (m < c->nmsg && !c->stopped && !c->err) {
    int r = sendmmsg(c->fd, g_msgs + m, c->nmsg - m, MSG_DONTWAIT);
    if (r < 0) {
      int e = errno;
      if (e == EINTR) continue;
      int is_gso = g_msgs[m].msg_hdr.msg_controllen > 0;
      if (is_gso && (e == EIO || e == EINVAL || e == EOPNOTSUPP || e == EMSGSIZE)) {
        if (c->fd >= 0 && c->fd < (int)sizeof g_gso_broken) g_gso_broken[c->fd] = 1;
        e = send_split(c, m);
        if (e == 0) {
          m++;
          continue;
        }
      }
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
        c->stopped = 1;
        c->stop_entry = g_msg_entry[m];
      } else {
        c->err = e;
        c->stop_entry = g_msg_entry[m];
      }
      break;
    }
    if (r == 0) {
      c->stopped = 1;
      c->stop_entry = g_msg_entry[m];
      break;
    }
    for (int j = 0; j < r; j++) credit(c, m + (uint32_t)j);
    m += (uint32_t)r;
  }
  c->nmsg = c->niov = c->nseg = 0;
}

static struct msghdr *add_msg(sendctx_t *c, uint32_t entry, const struct sockaddr_in *sa, uint32_t nseg) {
  uint32_t m = c->nmsg++;
  g_sa[m] = *sa;
  memset(&g_msgs[m], 0, sizeof g_msgs[m]);
  struct msghdr *h = &g_msgs[m].msg_hdr;
  h->msg_name = &g_sa[m];
  h->msg_namelen = sizeof g_sa[m];
  h->msg_iov = g_iov + c->niov;
  h->msg_iovlen = 0;
  g_msg_entry[m] = entry;
  g_msg_nseg[m] = nseg;
  g_msg_run[m] = 0;
  return h;
}

static void set_segment_cmsg(struct msghdr *h, uint32_t m, uint32_t seg_size) {
  h->msg_control = g_ctl[m].buf;
  h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
  struct cmsghdr *cm = CMSG_FIRSTHDR(h);
  cm->cmsg_level = SOL_UDP;
  cm->cmsg_type = UDP_SEGMENT;
  cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  uint16_t gs = (uint16_t)seg_size;
  memcpy(CMSG_DATA(cm), &gs, sizeof gs);
}

/*
 * udpSend(fd, frames, ips, ports, count, metas?, segs?, maxFrame?) -> entries sent.
 * Without metas: frames[i] to ips[i]:ports[i], one datagram each (sendmmsg). With metas (a
 * virtio_net_hdr per entry, 10 bytes each): an entry whose gso_type is TCPV4/TCPV6 is a tunnel
 * header (Geneve, its length from its first byte) followed by a TCP super-frame; it is cut into
 * segments of at most maxFrame bytes of Ethernet frame (each behind a copy of the tunnel
 * header, with its own IP/TCP headers and checksums) and sent with UDP_SEGMENT (up to 64
 * segments per message), or one datagram per segment if the socket refuses UDP_SEGMENT. An
 * entry with NEEDS_CSUM and no GSO gets its checksum completed first. segs[i] receives the
 * number of datagrams of entry i the kernel accepted. Returns how many entries were sent
 * entirely; stops at the first EAGAIN/ENOBUFS. A super-frame that cannot be segmented is
 * dropped (segs[i] = 0) and the call goes on.
 */
static napi_value UdpSend(napi_env env, napi_callback_info info) {
  GET_ARGS(8);
  int fd;
  uint32_t n;
  uint32_t *ips, *ports, *segs_out = NULL;
  size_t nips, nports, nsegs_out = 0;
  int64_t count, max_frame = 0;
  uint8_t *metas = NULL;
  size_t metas_len = 0;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "udpSend: frames")) return NULL;
  if (!arg_u32array(env, argv[2], &ips, &nips, "udpSend: ips")) return NULL;
  if (!arg_u32array(env, argv[3], &ports, &nports, "udpSend: ports")) return NULL;
  int64_t max = n;
  if ((int64_t)nips < max) max = (int64_t)nips;
  if ((int64_t)nports < max) max = (int64_t)nports;
  if (!arg_int(env, argv[4], 0, max, &count, "udpSend: count (<= frames/ips/ports length)")) return NULL;
  napi_valuetype t5 = napi_undefined;
  if (argv[5]) napi_typeof(env, argv[5], &t5);
  if (t5 != napi_undefined && t5 != napi_null) {
    if (!arg_bytes(env, argv[5], &metas, &metas_len, "udpSend: metas")) return NULL;
    if (metas_len < (size_t)count * OFL_VNET_HDR_LEN) {
      throw_range(env, "udpSend: metas holds %zu bytes, %lld entries need %lld", metas_len, (long long)count, (long long)count * OFL_VNET_HDR_LEN);
      return NULL;
    }
    if (!arg_u32array(env, argv[6], &segs_out, &nsegs_out, "udpSend: segs")) return NULL;
    if (nsegs_out < (size_t)count) {
      throw_range(env, "udpSend: segs must have at least count (%lld) elements", (long long)count);
      return NULL;
    }
    if (!arg_int(env, argv[7], 64, 65535, &max_frame, "udpSend: maxFrame")) return NULL;
    memset(segs_out, 0, (size_t)count * sizeof *segs_out);
  }

  sendctx_t c = {.fd = fd, .segs_out = segs_out};
  uint32_t total = (uint32_t)count;
  uint32_t idx;
  for (idx = 0; idx < total && !c.stopped && !c.err; idx++) {
    napi_value el;
    uint8_t *data;
    size_t len;
    if (napi_get_element(env, argv[1], idx, &el) != napi_ok) return NULL;
    if (!arg_bytes(env, el, &data, &len, "udpSend: frames[i]")) return NULL;
    if (ports[idx] > 65535) {
      throw_range(env, "udpSend: ports[%u] = %u is not a port", idx, ports[idx]);
      return NULL;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(ips[idx]);
    sa.sin_port = htons((uint16_t)ports[idx]);
    ofl_vnet_t vh = {0};
    if (metas) ofl_vnet_get(metas + (size_t)idx * OFL_VNET_HDR_LEN, &vh);
    uint32_t gl = len > 0 ? 8 + (uint32_t)(data[0] & 0x3f) * 4 : 0;
    if (vh.gso_type != OFL_GSO_NONE) {
      if (gl >= len) continue; /* dropped: segs[idx] stays 0 */
      int k = ofl_segment(data, gl, data + gl, len - gl, &vh, (uint32_t)max_frame, g_hdr_arena + (size_t)c.nseg * OFL_SEG_HDR_MAX, g_segs + c.nseg,
                          ARENA_SEGS - (int)c.nseg);
      if (k == -2 && c.nseg > 0) {
        send_flush(&c);
        if (c.stopped || c.err) break;
        k = ofl_segment(data, gl, data + gl, len - gl, &vh, (uint32_t)max_frame, g_hdr_arena, g_segs, ARENA_SEGS);
      }
      if (k <= 0) continue; /* not segmentable: dropped */
      if (c.nmsg + (uint32_t)k > ARENA_MSGS || c.niov + 2 * (uint32_t)k > IOV_CAP) {
        /* keep the segments: move them to the arena's front after the flush */
        uint32_t first = c.nseg;
        send_flush(&c);
        if (c.stopped || c.err) break;
        memmove(g_hdr_arena, g_hdr_arena + (size_t)first * OFL_SEG_HDR_MAX, (size_t)k * OFL_SEG_HDR_MAX);
        for (int j = 0; j < k; j++) g_segs[j] = g_segs[first + j], g_segs[j].hdr = g_hdr_arena + (size_t)j * OFL_SEG_HDR_MAX;
      }
      ofl_seg_t *sg = g_segs + c.nseg;
      c.nseg += (uint32_t)k;
      int use_gso = gso_ok(fd);
      for (int j = 0; j < k;) {
        /* one message: up to GSO_MAX_SEGS equal-sized segments (the last may be shorter) */
        uint32_t seg_size = sg[j].hdr_len + sg[j].payload_len;
        int take = 1;
        uint32_t bytes = seg_size;
        if (use_gso) {
          while (j + take < k && take < GSO_MAX_SEGS && bytes + sg[j + take].hdr_len + sg[j + take].payload_len <= GSO_MAX_BYTES &&
                 sg[j + take - 1].hdr_len + sg[j + take - 1].payload_len == seg_size) {
            bytes += sg[j + take].hdr_len + sg[j + take].payload_len;
            take++;
          }
          /* a shorter segment may only be the last one of a message */
          if (take > 1 && sg[j + take - 1].hdr_len + sg[j + take - 1].payload_len > seg_size) take--;
        }
        struct msghdr *h = add_msg(&c, idx, &sa, (uint32_t)take);
        for (int q = 0; q < take; q++) {
          g_iov[c.niov].iov_base = sg[j + q].hdr;
          g_iov[c.niov++].iov_len = sg[j + q].hdr_len;
          g_iov[c.niov].iov_base = (void *)sg[j + q].payload;
          g_iov[c.niov++].iov_len = sg[j + q].payload_len;
        }
        h->msg_iovlen = (size_t)take * 2;
        if (take > 1) set_segment_cmsg(h, c.nmsg - 1, seg_size);
        j += take;
      }
    } else {
      if (metas && (vh.flags & OFL_F_NEEDS_CSUM) && gl < len) (void)ofl_complete_csum(data + gl, len - gl, &vh);
      /* Runs of ordinary datagrams to one destination, all of one size (the last may be
       * shorter), go out as one UDP_SEGMENT message: one trip through the stack for up to 64. */
      if (c.nmsg > 0 && gso_ok(fd) && len > 0) {
        uint32_t pm = c.nmsg - 1;
        struct msghdr *ph = &g_msgs[pm].msg_hdr;
        if (g_msg_run[pm] && g_msg_nseg[pm] < GSO_MAX_SEGS && g_msg_last[pm] == g_msg_seg_size[pm] && len <= g_msg_seg_size[pm] &&
            g_msg_bytes[pm] + len <= GSO_MAX_BYTES && g_sa[pm].sin_addr.s_addr == sa.sin_addr.s_addr && g_sa[pm].sin_port == sa.sin_port &&
            ph->msg_iov + ph->msg_iovlen == g_iov + c.niov && c.niov < IOV_CAP) {
          g_iov[c.niov].iov_base = data;
          g_iov[c.niov++].iov_len = len;
          ph->msg_iovlen++;
          if (g_msg_nseg[pm] == 1) set_segment_cmsg(ph, pm, g_msg_seg_size[pm]);
          g_msg_nseg[pm]++;
          g_msg_bytes[pm] += (uint32_t)len;
          g_msg_last[pm] = (uint32_t)len;
          continue;
        }
      }
      if (c.nmsg + 1 > ARENA_MSGS || c.niov >= IOV_CAP) {
        send_flush(&c);
        if (c.stopped || c.err) break;
      }
      struct msghdr *h = add_msg(&c, idx, &sa, 1);
      g_iov[c.niov].iov_base = data;
      g_iov[c.niov++].iov_len = len;
      h->msg_iovlen = 1;
      g_msg_run[c.nmsg - 1] = 1;
      g_msg_seg_size[c.nmsg - 1] = g_msg_bytes[c.nmsg - 1] = g_msg_last[c.nmsg - 1] = (uint32_t)len;
    }
  }
  if (!c.stopped && !c.err) send_flush(&c);
  uint32_t done = (c.stopped || c.err) ? c.stop_entry : total;
  if (c.err) {
    char op[64];
    snprintf(op, sizeof op, "udpSend(fd %d)", fd);
    napi_value err = sys_error(env, op, "sendmmsg", c.err);
    set_num_prop(env, err, "sent", done);
    napi_throw(env, err);
    return NULL;
  }
  napi_value res;
  napi_create_uint32(env, done, &res);
  return res;
}

/*
 * gsoSegment(dgram, meta, metaOff, maxFrame, prefixLen?) -> Buffer[]: the segments of the TCP
 * super-frame at dgram[prefixLen..] (virtio_net_hdr at meta[metaOff..+10]) as new buffers,
 * each = dgram[0..prefixLen) + one segment (prefixLen 0: plain Ethernet frames). A frame
 * without GSO comes back as one copy (its checksum completed if NEEDS_CSUM). Returns null
 * when the frame cannot be segmented.
 */
static napi_value GsoSegment(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  uint8_t *data, *meta;
  size_t len, mlen;
  int64_t moff, max_frame, plen = 0;
  if (!arg_bytes(env, argv[0], &data, &len, "gsoSegment: dgram")) return NULL;
  if (!arg_bytes(env, argv[1], &meta, &mlen, "gsoSegment: meta")) return NULL;
  if (!arg_int(env, argv[2], 0, mlen >= OFL_VNET_HDR_LEN ? (int64_t)(mlen - OFL_VNET_HDR_LEN) : -1, &moff, "gsoSegment: metaOff")) return NULL;
  if (!arg_int(env, argv[3], 0, 65535, &max_frame, "gsoSegment: maxFrame")) return NULL;
  napi_valuetype t4 = napi_undefined;
  if (argv[4]) napi_typeof(env, argv[4], &t4);
  if (t4 != napi_undefined && !arg_int(env, argv[4], 0, (int64_t)len, &plen, "gsoSegment: prefixLen")) return NULL;
  ofl_vnet_t vh;
  ofl_vnet_get(meta + moff, &vh);
  napi_value arr, nul;
  napi_get_null(env, &nul);
  if (vh.gso_type == OFL_GSO_NONE) {
    napi_value b;
    void *p;
    if (napi_create_buffer_copy(env, len, data, &p, &b) != napi_ok) return NULL;
    if ((vh.flags & OFL_F_NEEDS_CSUM) && ofl_complete_csum((uint8_t *)p + plen, len - (size_t)plen, &vh) < 0) return nul;
    napi_create_array_with_length(env, 1, &arr);
    napi_set_element(env, arr, 0, b);
    return arr;
  }
  static uint8_t arena[ARENA_SEGS * OFL_SEG_HDR_MAX];
  static ofl_seg_t segs[ARENA_SEGS];
  int k = ofl_segment(data, (uint32_t)plen, data + plen, len - (size_t)plen, &vh, (uint32_t)max_frame, arena, segs, ARENA_SEGS);
  if (k <= 0) return nul;
  napi_create_array_with_length(env, (size_t)k, &arr);
  for (int j = 0; j < k; j++) {
    napi_value b;
    void *p;
    if (napi_create_buffer(env, segs[j].hdr_len + segs[j].payload_len, &p, &b) != napi_ok) return NULL;
    memcpy(p, segs[j].hdr, segs[j].hdr_len);
    memcpy((uint8_t *)p + segs[j].hdr_len, segs[j].payload, segs[j].payload_len);
    napi_set_element(env, arr, (uint32_t)j, b);
  }
  return arr;
}

/*
 * groSplit(buf, len, gsoSize, offs, lens, segs, metas) -> entry count: what the GRO-enabled
 * UDP poller does to each received buffer (exposed for tests): buf[0..len) holds datagrams of
 * gsoSize bytes (the last may be shorter); entries are written to offs/lens/segs and their
 * virtio_net_hdr to metas[10*i..]. buf is modified in place (coalescing).
 */
static napi_value GroSplit(napi_env env, napi_callback_info info) {
  GET_ARGS(7);
  uint8_t *buf, *metas;
  size_t blen, noffs, nlens, nsegs, mlen;
  int64_t len, gso;
  uint32_t *offs, *lens, *segs;
  if (!arg_bytes(env, argv[0], &buf, &blen, "groSplit: buf")) return NULL;
  if (!arg_int(env, argv[1], 0, (int64_t)blen, &len, "groSplit: len")) return NULL;
  if (!arg_int(env, argv[2], 0, 65535, &gso, "groSplit: gsoSize")) return NULL;
  if (!arg_u32array(env, argv[3], &offs, &noffs, "groSplit: offs")) return NULL;
  if (!arg_u32array(env, argv[4], &lens, &nlens, "groSplit: lens")) return NULL;
  if (!arg_u32array(env, argv[5], &segs, &nsegs, "groSplit: segs")) return NULL;
  if (!arg_bytes(env, argv[6], &metas, &mlen, "groSplit: metas")) return NULL;
  size_t cap = noffs;
  if (nlens < cap) cap = nlens;
  if (nsegs < cap) cap = nsegs;
  if (mlen / OFL_VNET_HDR_LEN < cap) cap = mlen / OFL_VNET_HDR_LEN;
  if (cap > 4096) cap = 4096;
  static ofl_entry_t ents[4096];
  uint32_t dropped = 0;
  int k = ofl_gro_split(buf, (uint32_t)len, (uint32_t)gso, ents, (int)cap, &dropped);
  for (int j = 0; j < k; j++) {
    offs[j] = ents[j].off;
    lens[j] = ents[j].len;
    segs[j] = ents[j].segs;
    ofl_vnet_put(metas + (size_t)j * OFL_VNET_HDR_LEN, &ents[j].vnet);
  }
  napi_value res;
  napi_create_uint32(env, (uint32_t)k, &res);
  return res;
}

/* ------------------------------------------------------------------------------------ */
/* pollers                                                                              */

enum { KIND_FRAMES = 0, KIND_UDP = 1, KIND_VNET = 2 };
#define GRO_CTRL_LEN CMSG_SPACE(sizeof(int))
/* Entries one received buffer may yield (UDP GSO allows up to 128 segments per send). */
#define GRO_MAX_ENTS 256

typedef struct poller {
  napi_env env;
  addon_t *addon;
  struct poller *next;
  uv_poll_t *h; /* non-NULL exactly while started */
  int fd;
  int kind;
  int is_socket;
  uint8_t *slab;
  uint32_t slot, headroom, max_batch;
  uint32_t *lens, *ips, *ports;
  napi_ref self_ref; /* strong while started */
  napi_ref cb_ref;   /* weak: the hidden property keeps the callback alive */
  napi_async_context actx;
  struct mmsghdr *msgs;
  struct iovec *iov;
  struct sockaddr_in *addrs;
  /* vnet TAPs and GRO sockets: a virtio_net_hdr per frame/entry; GRO: entry offsets/segments */
  uint8_t *meta;
  uint32_t *offs, *segs;
  uint32_t max_entries;
  int gro;
  uint8_t *ctrl;
  ofl_entry_t *ents;
  double gso_drops, gro_dropped;
  int in_cb;
  int fd_closed; /* closed through the addon's close() */
  int dead;      /* stopped for good after a persistent error */
  int consecutive_errors;
  int last_errno;
  double frames, batches, truncated, errors, wakeups;
} poller_t;

static void on_handle_closed(uv_handle_t *h) { free(h); }

/* Stop watching (idempotent). Safe from inside onBatch. */
static void poller_stop(poller_t *p) {
  if (!p->h) return;
  uv_close((uv_handle_t *)p->h, on_handle_closed); /* stops the watcher now, frees later */
  p->h = NULL;
  uint32_t rc;
  napi_reference_unref(p->env, p->self_ref, &rc);
}

/* Read one batch into the slab. Returns the number of frames delivered in slots 0..n-1. */
static uint32_t read_batch(poller_t *p) {
  const uint32_t cap = p->slot - p->headroom;
  uint32_t n = 0;
  int err = 0;
  if (p->kind == KIND_VNET) {
    uint32_t attempts = 0;
    while (n < p->max_batch && attempts < 2 * p->max_batch) {
      attempts++;
      uint8_t *buf = p->slab + (size_t)n * p->slot + p->headroom;
      uint8_t *m = p->meta + (size_t)n * OFL_VNET_HDR_LEN;
      struct iovec v[3] = {{m, OFL_VNET_HDR_LEN}, {buf, cap}, {g_scratch, sizeof g_scratch}};
      ssize_t r = readv(p->fd, v, 3);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      if (r <= OFL_VNET_HDR_LEN) continue;
      r -= OFL_VNET_HDR_LEN;
      if ((size_t)r > cap) {
        p->truncated++;
        continue;
      }
      ofl_vnet_t h;
      ofl_vnet_get(m, &h);
      uint8_t gt = h.gso_type & (uint8_t)~OFL_GSO_ECN;
      if (gt == OFL_GSO_NONE) {
        /* A partial checksum on a single frame: complete it now, so only super-frames
         * carry a header further on. */
        if ((h.flags & OFL_F_NEEDS_CSUM) && ofl_complete_csum(buf, (size_t)r, &h) < 0) {
          p->gso_drops++;
          continue;
        }
        memset(m, 0, OFL_VNET_HDR_LEN);
      } else if (gt != OFL_GSO_TCPV4 && gt != OFL_GSO_TCPV6) {
        p->gso_drops++;
        continue;
      }
      p->lens[n++] = (uint32_t)r;
    }
  } else if (p->kind == KIND_FRAMES) {
    uint32_t attempts = 0;
    while (n < p->max_batch && attempts < 2 * p->max_batch) {
      attempts++;
      uint8_t *buf = p->slab + (size_t)n * p->slot + p->headroom;
      ssize_t r;
      if (p->is_socket) {
        /* MSG_TRUNC: the return value is the real length even when it does not fit. */
        r = recv(p->fd, buf, cap, MSG_TRUNC | MSG_DONTWAIT);
      } else {
        struct iovec v[2] = {{buf, cap}, {g_scratch, sizeof g_scratch}};
        r = readv(p->fd, v, 2);
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      if (r == 0) continue;
      if ((size_t)r > cap) {
        p->truncated++;
        continue;
      }
      p->lens[n++] = (uint32_t)r;
    }
  } else {
    int r;
    for (uint32_t j = 0; j < p->max_batch; j++) {
      p->msgs[j].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
      p->msgs[j].msg_hdr.msg_flags = 0;
      p->msgs[j].msg_len = 0;
      if (p->gro) {
        p->msgs[j].msg_hdr.msg_control = p->ctrl + (size_t)j * GRO_CTRL_LEN;
        p->msgs[j].msg_hdr.msg_controllen = GRO_CTRL_LEN;
      }
    }
    do {
      r = recvmmsg(p->fd, p->msgs, p->max_batch, MSG_DONTWAIT, NULL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
      r = 0;
    }
    for (int j = 0; j < r && p->gro; j++) {
      struct mmsghdr *m = &p->msgs[j];
      if (m->msg_hdr.msg_flags & MSG_TRUNC) {
        p->truncated++;
        continue;
      }
      int gso = 0;
      for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr); cm; cm = CMSG_NXTHDR(&m->msg_hdr, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) memcpy(&gso, CMSG_DATA(cm), sizeof gso);
      }
      uint32_t ip = 0, port = 0;
      if (m->msg_hdr.msg_namelen >= sizeof(struct sockaddr_in) && p->addrs[j].sin_family == AF_INET) {
        ip = ntohl(p->addrs[j].sin_addr.s_addr);
        port = ntohs(p->addrs[j].sin_port);
      }
      size_t base = (size_t)j * p->slot + p->headroom;
      uint32_t dropped = 0;
      uint32_t room = p->max_entries - n < GRO_MAX_ENTS ? p->max_entries - n : GRO_MAX_ENTS;
      int k = ofl_gro_split(p->slab + base, m->msg_len, gso > 0 ? (uint32_t)gso : 0, p->ents, (int)room, &dropped);
      p->gro_dropped += dropped;
      for (int e = 0; e < k; e++) {
        p->offs[n] = (uint32_t)(base + p->ents[e].off);
        p->lens[n] = p->ents[e].len;
        p->segs[n] = p->ents[e].segs;
        p->ips[n] = ip;
        p->ports[n] = port;
        ofl_vnet_put(p->meta + (size_t)n * OFL_VNET_HDR_LEN, &p->ents[e].vnet);
        n++;
      }
    }
    for (int j = 0; j < r && !p->gro; j++) {
      struct mmsghdr *m = &p->msgs[j];
      if (m->msg_hdr.msg_flags & MSG_TRUNC) {
        p->truncated++;
        continue;
      }
      if (n != (uint32_t)j) {
        memmove(p->slab + (size_t)n * p->slot + p->headroom, p->slab + (size_t)j * p->slot + p->headroom, m->msg_len);
      }
      p->lens[n] = m->msg_len;
      if (m->msg_hdr.msg_namelen >= sizeof(struct sockaddr_in) && p->addrs[j].sin_family == AF_INET) {
        p->ips[n] = ntohl(p->addrs[j].sin_addr.s_addr);
        p->ports[n] = ntohs(p->addrs[j].sin_port);
      } else {
        p->ips[n] = 0;
        p->ports[n] = 0;
      }
      n++;
    }
  }
  if (err) {
    p->errors++;
    p->last_errno = err;
    if (n == 0) p->consecutive_errors++;
  } else {
    p->consecutive_errors = 0;
  }
  if (n > 0) {
    p->frames += n;
    p->batches++;
  }
  return n;
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
    uint32_t n = read_batch(p);
    if (n > 0) deliver_async(p, n);
    if (p->h != h) return; /* stopped from onBatch */
    check_dead(p, 1);
    if (p->h == h && uv_poll_start(h, UV_READABLE, on_poll) != 0) {
      p->dead = 1;
      poller_stop(p);
    }
    return;
  }
  uint32_t n = read_batch(p);
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
  uint32_t n = read_batch(p);
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

static int opt_prop(napi_env env, napi_value opts, const char *key, napi_value *out) {
  napi_valuetype t;
  *out = NULL;
  if (!opts || napi_typeof(env, opts, &t) != napi_ok || t != napi_object) return 0;
  bool has = false;
  if (napi_has_named_property(env, opts, key, &has) != napi_ok || !has) return 0;
  if (napi_get_named_property(env, opts, key, out) != napi_ok) return 0;
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
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
static napi_value CreatePoller(napi_env env, napi_callback_info info) {
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
  p->addon = get_addon(env);
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
  if (gro) {
    p->ctrl = calloc((size_t)max_batch, GRO_CTRL_LEN);
    p->ents = calloc(GRO_MAX_ENTS, sizeof *p->ents);
    if (!p->ctrl || !p->ents) {
      free(p->ctrl);
      free(p->ents);
      free(p);
      throw_sys(env, op, "calloc", ENOMEM);
      return NULL;
    }
  }
  if (k == KIND_UDP) {
    p->msgs = calloc((size_t)max_batch, sizeof *p->msgs);
    p->iov = calloc((size_t)max_batch, sizeof *p->iov);
    p->addrs = calloc((size_t)max_batch, sizeof *p->addrs);
    if (!p->msgs || !p->iov || !p->addrs) {
      free(p->msgs);
      free(p->iov);
      free(p->addrs);
      free(p->ctrl);
      free(p->ents);
      free(p);
      throw_sys(env, op, "calloc", ENOMEM);
      return NULL;
    }
    for (uint32_t j = 0; j < p->max_batch; j++) {
      p->iov[j].iov_base = slab + (size_t)j * p->slot + p->headroom;
      p->iov[j].iov_len = p->slot - p->headroom;
      p->msgs[j].msg_hdr.msg_name = &p->addrs[j];
      p->msgs[j].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
      p->msgs[j].msg_hdr.msg_iov = &p->iov[j];
      p->msgs[j].msg_hdr.msg_iovlen = 1;
    }
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
  if (p->self_ref) napi_delete_reference(env, p->self_ref);
  if (p->cb_ref) napi_delete_reference(env, p->cb_ref);
  if (p->actx) napi_async_destroy(env, p->actx);
  free(p->msgs);
  free(p->iov);
  free(p->addrs);
  free(p->ctrl);
  free(p->ents);
  free(p);
  {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) throw_io(env, "%s: internal N-API failure", op);
  }
  return NULL;
}

/* close(fd): stops the pollers on fd first, then closes it. */
static napi_value Close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  addon_t *a = get_addon(env);
  for (poller_t *q = a ? a->pollers : NULL; q; q = q->next) {
    if (q->fd == fd && !q->fd_closed) {
      poller_stop(q);
      q->fd_closed = 1;
    }
  }
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
  /* Pollers still listed are finalized by their own finalizers (which unlink them). */
  free(data);
}

NAPI_MODULE_INIT() {
  addon_t *a = calloc(1, sizeof *a);
  if (!a || napi_set_instance_data(env, a, addon_free, NULL) != napi_ok) {
    free(a);
    napi_throw_error(env, "ERR_NATIVE_IO", "vnsnap_io: cannot allocate addon state");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"tapOpen", NULL, TapOpen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"packetOpen", NULL, PacketOpen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpOpen", NULL, UdpOpen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"close", NULL, Close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writeFrames", NULL, WriteFrames, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpSend", NULL, UdpSend, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writeFramesVnet", NULL, WriteFramesVnet, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gsoSegment", NULL, GsoSegment, NULL, NULL, NULL, napi_enumerable, NULL},
      {"groSplit", NULL, GroSplit, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createPoller", NULL, CreatePoller, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
