/* napi_util: errors and argument checks shared by every entry point (see napi_util.h). */
#define _GNU_SOURCE
#include "napi_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

napi_value make_error(napi_env env, const char *code, const char *msg) {
  napi_value c, m, e;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &e);
  return e;
}

void set_str_prop(napi_env env, napi_value obj, const char *key, const char *val) {
  napi_value v;
  if (napi_create_string_utf8(env, val, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

void set_num_prop(napi_env env, napi_value obj, const char *key, double val) {
  napi_value v;
  if (napi_create_double(env, val, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

void set_bool_prop(napi_env env, napi_value obj, const char *key, int val) {
  napi_value v;
  if (napi_get_boolean(env, val != 0, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

/* "<op>: <syscall>: <strerror>", code ERR_NATIVE_IO, errno/errnoCode/syscall properties. */
napi_value sys_error(napi_env env, const char *op, const char *syscall_name, int err) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s: %s", op, syscall_name, strerror(err));
  napi_value e = make_error(env, "ERR_NATIVE_IO", msg);
  set_num_prop(env, e, "errno", -err);
  const char *name = strerrorname_np(err);
  if (name) set_str_prop(env, e, "errnoCode", name);
  set_str_prop(env, e, "syscall", syscall_name);
  return e;
}

void throw_sys(napi_env env, const char *op, const char *syscall_name, int err) {
  napi_throw(env, sys_error(env, op, syscall_name, err));
}

#define FORMAT_MSG(msg, fmt)             \
  char msg[512];                         \
  do {                                   \
    va_list ap_;                         \
    va_start(ap_, fmt);                  \
    vsnprintf(msg, sizeof msg, fmt, ap_); \
    va_end(ap_);                         \
  } while (0)

void throw_io(napi_env env, const char *fmt, ...) {
  FORMAT_MSG(msg, fmt);
  napi_throw(env, make_error(env, "ERR_NATIVE_IO", msg));
}

void throw_type(napi_env env, const char *fmt, ...) {
  FORMAT_MSG(msg, fmt);
  napi_throw_type_error(env, "ERR_INVALID_ARGUMENT", msg);
}

void throw_range(napi_env env, const char *fmt, ...) {
  FORMAT_MSG(msg, fmt);
  napi_throw_range_error(env, "ERR_INVALID_ARGUMENT", msg);
}

int arg_string(napi_env env, napi_value v, char *buf, size_t size, size_t *len_out, const char *what) {
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

int arg_int(napi_env env, napi_value v, int64_t lo, int64_t hi, int64_t *out, const char *what) {
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

int arg_fd(napi_env env, napi_value v, int *fd) {
  int64_t x;
  if (!arg_int(env, v, 0, INT32_MAX, &x, "fd")) return 0;
  *fd = (int)x;
  return 1;
}

int arg_u32array(napi_env env, napi_value v, uint32_t **data, size_t *len, const char *what) {
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

int arg_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len, const char *what) {
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

int arg_f64array(napi_env env, napi_value v, double **data, size_t *len, const char *what) {
  bool is = false;
  napi_typedarray_type t;
  void *p = NULL;
  if (!v || napi_is_typedarray(env, v, &is) != napi_ok || !is || napi_get_typedarray_info(env, v, &t, len, &p, NULL, NULL) != napi_ok || t != napi_float64_array) {
    throw_type(env, "%s must be a Float64Array", what);
    return 0;
  }
  *data = (double *)p;
  return 1;
}

int arg_array(napi_env env, napi_value v, uint32_t *len, const char *what) {
  bool is = false;
  if (!v || napi_is_array(env, v, &is) != napi_ok || !is) {
    throw_type(env, "%s must be an array", what);
    return 0;
  }
  napi_get_array_length(env, v, len);
  return 1;
}

int arg_function(napi_env env, napi_value v, const char *what) {
  napi_valuetype t;
  if (!v || napi_typeof(env, v, &t) != napi_ok || t != napi_function) {
    throw_type(env, "%s must be a function", what);
    return 0;
  }
  return 1;
}

int arg_present(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  if (v) napi_typeof(env, v, &t);
  return t != napi_undefined && t != napi_null;
}

int opt_prop(napi_env env, napi_value opts, const char *key, napi_value *out) {
  napi_valuetype t;
  *out = NULL;
  if (!opts || napi_typeof(env, opts, &t) != napi_ok || t != napi_object) return 0;
  bool has = false;
  if (napi_has_named_property(env, opts, key, &has) != napi_ok || !has) return 0;
  if (napi_get_named_property(env, opts, key, out) != napi_ok) return 0;
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
}

int opt_bool(napi_env env, napi_value opts, const char *key) {
  napi_value v;
  bool b = false;
  if (!opt_prop(env, opts, key, &v) || napi_get_value_bool(env, v, &b) != napi_ok) return 0;
  return b;
}

int arg_records(napi_env env, napi_value v, int64_t count, size_t rec_len, uint8_t **data, const char *what, const char *unit) {
  size_t len = 0;
  *data = NULL;
  if (!arg_present(env, v)) return 1;
  if (!arg_bytes(env, v, data, &len, what)) return 0;
  if (len < (size_t)count * rec_len) {
    throw_range(env, "%s holds %zu bytes, %lld %s need %lld", what, len, (long long)count, unit, (long long)count * (long long)rec_len);
    return 0;
  }
  return 1;
}

napi_value fail_close(napi_env env, int fd, const char *op, const char *step) {
  int e = errno;
  close(fd);
  throw_sys(env, op, step, e);
  return NULL;
}

int arg_subject(napi_env env, napi_value v, const char *fn, const char *field, char name[256], size_t *len, char op[300]) {
  char what[64];
  snprintf(what, sizeof what, "%s: %s", fn, field);
  if (!arg_string(env, v, name, 256, len, what)) return 0;
  snprintf(op, 300, "%s(%s)", fn, name);
  return 1;
}
