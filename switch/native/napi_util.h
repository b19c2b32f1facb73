/*
 * napi_util: the error and argument conventions every entry point of the vnsnap_io addon
 * shares, so each file states only its own logic.
 *
 * Guarantees (the contract switch/native-io.ts documents):
 * - A failing system call throws a JS Error with code 'ERR_NATIVE_IO', the message
 *   "<op>: <syscall>: <strerror>" and the properties `errno` (negative, as Node does),
 *   `errnoCode` ('ENODEV', ...) and `syscall`.
 * - A bad argument type throws a TypeError, a bad range a RangeError, both with code
 *   'ERR_INVALID_ARGUMENT'.
 * - Every arg_* helper returns 1 on success, or throws and returns 0; the caller then
 *   returns NULL at once.
 * No state: these helpers are safe in any environment (main thread or worker).
 */
#ifndef VNSNAP_NAPI_UTIL_H
#define VNSNAP_NAPI_UTIL_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

napi_value make_error(napi_env env, const char *code, const char *msg);
void set_str_prop(napi_env env, napi_value obj, const char *key, const char *val);
void set_num_prop(napi_env env, napi_value obj, const char *key, double val);
void set_bool_prop(napi_env env, napi_value obj, const char *key, int val);

/* "<op>: <syscall>: <strerror>", code ERR_NATIVE_IO, errno/errnoCode/syscall properties. */
napi_value sys_error(napi_env env, const char *op, const char *syscall_name, int err);
void throw_sys(napi_env env, const char *op, const char *syscall_name, int err);
void throw_io(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void throw_type(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void throw_range(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int arg_string(napi_env env, napi_value v, char *buf, size_t size, size_t *len_out, const char *what);
int arg_int(napi_env env, napi_value v, int64_t lo, int64_t hi, int64_t *out, const char *what);
int arg_fd(napi_env env, napi_value v, int *fd);
int arg_u32array(napi_env env, napi_value v, uint32_t **data, size_t *len, const char *what);
int arg_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len, const char *what);
int arg_f64array(napi_env env, napi_value v, double **data, size_t *len, const char *what);
int arg_array(napi_env env, napi_value v, uint32_t *len, const char *what);
int arg_function(napi_env env, napi_value v, const char *what);
/* 1 when v is neither missing, undefined nor null. */
int arg_present(napi_env env, napi_value v);

/* An optional Buffer of `count` records of rec_len bytes each: *data = NULL when v is absent
 * (undefined/null); a RangeError "<what> holds N bytes, <count> <unit> need M" when short. */
int arg_records(napi_env env, napi_value v, int64_t count, size_t rec_len, uint8_t **data, const char *what, const char *unit);
/* The name argument of fn (an interface name, an address) into name[256]: what = "<fn>:
 * <field>" in errors; op[300] receives "<fn>(<name>)" for the messages that follow. */
int arg_subject(napi_env env, napi_value v, const char *fn, const char *field, char name[256], size_t *len, char op[300]);
/* Closes fd (a half-opened socket or device) and throws "<op>: <step>: <strerror(errno)>".
 * Returns NULL, for `return fail_close(...)`. */
napi_value fail_close(napi_env env, int fd, const char *op, const char *step);

/* opts[key] as a boolean (0 when opts is not an object or the key is missing). */
int opt_bool(napi_env env, napi_value opts, const char *key);
/* opts[key] into *out; 1 when it is present and neither undefined nor null. */
int opt_prop(napi_env env, napi_value opts, const char *key, napi_value *out);

/* Declares argc/argv[n] (missing arguments NULL) and self_this for an entry point. */
#define GET_ARGS(n)                                                                         \
  size_t argc = (n);                                                                        \
  napi_value argv[(n)] = {0};                                                               \
  napi_value self_this = NULL;                                                              \
  if (napi_get_cb_info(env, info, &argc, argv, &self_this, NULL) != napi_ok) return NULL;   \
  for (size_t i_ = argc; i_ < (n); i_++) argv[i_] = NULL;                                   \
  (void)self_this;

#endif
