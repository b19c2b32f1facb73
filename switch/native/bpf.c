/*
 * bpf: the raw bpf(2) calls through which the switch drives its in-kernel data path's maps
 * (switch/bpf/vnsnap-dp.bpf.c; TypeScript side switch/bpf-dp/maps.ts): open a pinned map or
 * program, update/look up/delete one element, and run a program on a test frame
 * (BPF_PROG_TEST_RUN, what the unit tests of the data path's rules drive).
 *
 * Why raw syscalls and not libbpf: five commands, each one struct; the addon links nothing new.
 * No per-packet work passes here: these are control-plane calls (an FDB entry, a port's epoch at
 * its cut, counters read when markers are sent).
 *
 * Guarantees: keys and values are Buffers the caller sizes to the map's key/value size (the
 * kernel checks; a wrong size is EINVAL, thrown); a missing element is `false`, not an error;
 * every failing call throws ERR_NATIVE_IO naming the command and errno. Returned fds are
 * close-on-exec (BPF_F_RDONLY etc. not used: the agent owns its maps).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"

static long sys_bpf(int cmd, union bpf_attr *attr) {
  return syscall(__NR_bpf, cmd, attr, sizeof *attr);
}

/* bpfObjGet(path) -> fd: a pinned map or program. */
napi_value BpfObjGet(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  char p[256], op[300];
  size_t len = 0;
  if (!arg_subject(env, argv[0], "bpfObjGet", "path", p, &len, op)) return NULL;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.pathname = (uint64_t)(uintptr_t)p;
  a.file_flags = 0;
  long fd = sys_bpf(BPF_OBJ_GET, &a);
  if (fd < 0) {
    throw_sys(env, op, "bpf(BPF_OBJ_GET)", errno);
    return NULL;
  }
  napi_value res;
  napi_create_int32(env, (int32_t)fd, &res);
  return res;
}

/* The (fd, key) arguments every element call starts with. */
static int map_args(napi_env env, napi_value *argv, int *fd, uint8_t **key, size_t *klen) {
  return arg_fd(env, argv[0], fd) && arg_bytes(env, argv[1], key, klen, "key");
}

/*
 * One element command on map fd: true when it succeeded, false when it failed with `quiet`
 * (the element is missing, or the flags forbid the update), a throw otherwise (NULL).
 */
static napi_value elem_call(napi_env env, int cmd, const char *op, int fd, uint8_t *key, uint8_t *val, uint64_t flags, int quiet) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = (uint32_t)fd;
  a.key = (uint64_t)(uintptr_t)key;
  a.value = (uint64_t)(uintptr_t)val;
  a.flags = flags;
  int ok = sys_bpf(cmd, &a) == 0;
  if (!ok && errno != quiet) {
    throw_sys(env, op, "bpf", errno);
    return NULL;
  }
  napi_value res;
  napi_get_boolean(env, ok, &res);
  return res;
}

/* bpfMapUpdate(fd, key, value, flags) -> true, or false when flags forbid it (EEXIST/ENOENT). */
napi_value BpfMapUpdate(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  uint8_t *key, *val;
  size_t klen, vlen;
  int64_t flags;
  if (!map_args(env, argv, &fd, &key, &klen) || !arg_bytes(env, argv[2], &val, &vlen, "value") || !arg_int(env, argv[3], 0, 4, &flags, "flags")) return NULL;
  return elem_call(env, BPF_MAP_UPDATE_ELEM, "bpfMapUpdate", fd, key, val, (uint64_t)flags, flags == BPF_EXIST ? ENOENT : EEXIST);
}

/* bpfMapLookup(fd, key, valueOut) -> true (valueOut filled) or false (no such element). */
napi_value BpfMapLookup(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  uint8_t *key, *val;
  size_t klen, vlen;
  if (!map_args(env, argv, &fd, &key, &klen) || !arg_bytes(env, argv[2], &val, &vlen, "valueOut")) return NULL;
  return elem_call(env, BPF_MAP_LOOKUP_ELEM, "bpfMapLookup", fd, key, val, 0, ENOENT);
}

/* bpfMapDelete(fd, key) -> true, or false when there was no such element. */
napi_value BpfMapDelete(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  uint8_t *key;
  size_t klen;
  if (!map_args(env, argv, &fd, &key, &klen)) return NULL;
  return elem_call(env, BPF_MAP_DELETE_ELEM, "bpfMapDelete", fd, key, NULL, 0, ENOENT);
}

/*
 * bpfProgTestRun(fd, data, ctx | null, dataOut) -> { retval, size }: the program run once on
 * `data` (an Ethernet frame) with `ctx` as its struct __sk_buff (cb[], ifindex...), the frame as
 * it left the program copied into dataOut (size: its length).
 */
napi_value BpfProgTestRun(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  uint8_t *data, *ctx = NULL, *out;
  size_t dlen, clen = 0, olen;
  if (!arg_fd(env, argv[0], &fd) || !arg_bytes(env, argv[1], &data, &dlen, "data")) return NULL;
  if (arg_present(env, argv[2]) && !arg_bytes(env, argv[2], &ctx, &clen, "ctx")) return NULL;
  if (!arg_bytes(env, argv[3], &out, &olen, "dataOut")) return NULL;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.test.prog_fd = (uint32_t)fd;
  a.test.data_in = (uint64_t)(uintptr_t)data;
  a.test.data_size_in = (uint32_t)dlen;
  a.test.data_out = (uint64_t)(uintptr_t)out;
  a.test.data_size_out = (uint32_t)olen;
  a.test.ctx_in = (uint64_t)(uintptr_t)ctx;
  a.test.ctx_size_in = (uint32_t)clen;
  a.test.repeat = 1;
  if (sys_bpf(BPF_PROG_TEST_RUN, &a) < 0) {
    throw_sys(env, "bpfProgTestRun", "bpf(BPF_PROG_TEST_RUN)", errno);
    return NULL;
  }
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "retval", a.test.retval);
  set_num_prop(env, res, "size", a.test.data_size_out);
  return res;
}
