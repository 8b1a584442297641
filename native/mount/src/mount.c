/*
 * mount(2) and umount2(2) for Node.js (N-API, ABI-stable).
 *
 * Why: util-linux mount(8) turns `mount -t erofs IMAGE DIR` into a loop-device mount, and a loop-backed
 * EROFS image cannot take `-o device=<regular file>`; the raw syscall on a regular file gives the kernel's
 * file-backed EROFS mount, which can.
 *
 * Exports:
 *   mountSync(source|null, target, fstype|null, flags, data|null) -> undefined, throws
 *   umount2Sync(target, flags) -> undefined, throws
 *   mount(...same) -> Promise<undefined>       (runs on the libuv pool: the kernel may open a blob file
 *   umount2(...same) -> Promise<undefined>      served by FUSE from this very process)
 * Errors: Error with .code = errno name ("EINVAL"), .errno = -errno (as Node's fs errors), .syscall, .path.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <node_api.h>

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, "ERR_NAPI", "N-API call failed: " #call);      \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

typedef struct {
  int is_umount;
  char *source;
  char *target;
  char *fstype;
  char *data;
  unsigned long flags;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} op_t;

static void op_free(op_t *op) {
  if (op == NULL) return;
  free(op->source);
  free(op->target);
  free(op->fstype);
  free(op->data);
  free(op);
}

/* Copies a JS string argument (or NULL for null/undefined when nullable). Returns 0 on success. */
static int get_string(napi_env env, napi_value v, int nullable, const char *what, char **out) {
  napi_valuetype t;
  *out = NULL;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if ((t == napi_null || t == napi_undefined) && nullable) return 0;
  if (t != napi_string) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be a string%s", what, nullable ? " or null" : "");
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return -1;
  }
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return -1;
  char *s = malloc(len + 1);
  if (s == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return -1;
  }
  if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
    free(s);
    return -1;
  }
  if (strlen(s) != len) {
    free(s);
    char msg[128];
    snprintf(msg, sizeof msg, "%s must not contain NUL bytes", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
    return -1;
  }
  *out = s;
  return 0;
}

static int get_flags(napi_env env, napi_value v, unsigned long *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_undefined || t == napi_null) {
    *out = 0;
    return 0;
  }
  int64_t n = 0;
  if (t != napi_number || napi_get_value_int64(env, v, &n) != napi_ok || n < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "flags must be a non-negative integer");
    return -1;
  }
  *out = (unsigned long)n;
  return 0;
}

static napi_value make_errno_error(napi_env env, int err, const char *syscall, const char *path) {
  const char *name = strerrorname_np(err);
  char codebuf[32];
  if (name == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    name = codebuf;
  }
  size_t mlen = strlen(name) + strlen(strerror(err)) + strlen(syscall) + (path ? strlen(path) : 0) + 16;
  char *msg = malloc(mlen);
  if (msg == NULL) return NULL;
  snprintf(msg, mlen, "%s: %s, %s%s%s", name, strerror(err), syscall, path ? " " : "", path ? path : "");
  napi_value jmsg, jcode, jerr, jerrno, jsys, jpath;
  napi_value result = NULL;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) == napi_ok &&
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &jcode) == napi_ok &&
      napi_create_error(env, jcode, jmsg, &jerr) == napi_ok &&
      napi_create_int32(env, -err, &jerrno) == napi_ok &&
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &jsys) == napi_ok) {
    napi_set_named_property(env, jerr, "errno", jerrno);
    napi_set_named_property(env, jerr, "syscall", jsys);
    if (path != NULL && napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &jpath) == napi_ok) {
      napi_set_named_property(env, jerr, "path", jpath);
    }
    result = jerr;
  }
  free(msg);
  return result;
}

static void run_op(op_t *op) {
  int r;
  if (op->is_umount) {
    r = umount2(op->target, (int)op->flags);
  } else {
    r = mount(op->source, op->target, op->fstype, op->flags, op->data);
  }
  op->err = r == 0 ? 0 : errno;
}

/* Parses arguments into a new op; returns NULL with a pending exception on bad input. */
static op_t *parse_args(napi_env env, napi_callback_info info, int is_umount) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  napi_value undef;
  napi_get_undefined(env, &undef);
  for (size_t i = argc; i < 5; i++) argv[i] = undef;
  op_t *op = calloc(1, sizeof *op);
  if (op == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  op->is_umount = is_umount;
  if (is_umount) {
    if (get_string(env, argv[0], 0, "target", &op->target) != 0 || get_flags(env, argv[1], &op->flags) != 0) {
      op_free(op);
      return NULL;
    }
  } else {
    if (get_string(env, argv[0], 1, "source", &op->source) != 0 ||
        get_string(env, argv[1], 0, "target", &op->target) != 0 ||
        get_string(env, argv[2], 1, "fstype", &op->fstype) != 0 ||
        get_flags(env, argv[3], &op->flags) != 0 ||
        get_string(env, argv[4], 1, "data", &op->data) != 0) {
      op_free(op);
      return NULL;
    }
  }
  return op;
}

static napi_value sync_call(napi_env env, napi_callback_info info, int is_umount) {
  op_t *op = parse_args(env, info, is_umount);
  if (op == NULL) return NULL;
  run_op(op);
  if (op->err != 0) {
    napi_value e = make_errno_error(env, op->err, is_umount ? "umount2" : "mount", op->target);
    if (e != NULL) napi_throw(env, e);
    else napi_throw_error(env, NULL, "mount failed");
  }
  op_free(op);
  return NULL;
}

static napi_value MountSync(napi_env env, napi_callback_info info) { return sync_call(env, info, 0); }
static napi_value Umount2Sync(napi_env env, napi_callback_info info) { return sync_call(env, info, 1); }

static void work_execute(napi_env env, void *data) {
  (void)env;
  run_op((op_t *)data);
}

static void work_complete(napi_env env, napi_status status, void *data) {
  op_t *op = (op_t *)data;
  if (status != napi_ok) op->err = ECANCELED;
  if (op->err == 0) {
    napi_value undef;
    napi_get_undefined(env, &undef);
    napi_resolve_deferred(env, op->deferred, undef);
  } else {
    napi_value e = make_errno_error(env, op->err, op->is_umount ? "umount2" : "mount", op->target);
    if (e == NULL) {
      napi_value msg;
      napi_create_string_utf8(env, "mount failed", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &e);
    }
    napi_reject_deferred(env, op->deferred, e);
  }
  napi_delete_async_work(env, op->work);
  op_free(op);
}

static napi_value async_call(napi_env env, napi_callback_info info, int is_umount) {
  op_t *op = parse_args(env, info, is_umount);
  if (op == NULL) return NULL;
  napi_value promise, name;
  if (napi_create_promise(env, &op->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, is_umount ? "guoce:umount2" : "guoce:mount", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, work_execute, work_complete, op, &op->work) != napi_ok ||
      napi_queue_async_work(env, op->work) != napi_ok) {
    op_free(op);
    napi_throw_error(env, "ERR_NAPI", "cannot queue mount work");
    return NULL;
  }
  return promise;
}

static napi_value Mount(napi_env env, napi_callback_info info) { return async_call(env, info, 0); }
static napi_value Umount2(napi_env env, napi_callback_info info) { return async_call(env, info, 1); }

static int set_u32(napi_env env, napi_value obj, const char *name, unsigned long v) {
  napi_value n;
  if (napi_create_double(env, (double)v, &n) != napi_ok) return -1;
  return napi_set_named_property(env, obj, name, n) == napi_ok ? 0 : -1;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "mountSync", NULL, MountSync, NULL, NULL, NULL, napi_enumerable, NULL },
    { "umount2Sync", NULL, Umount2Sync, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mount", NULL, Mount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "umount2", NULL, Umount2, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  napi_value c;
  CHECK(napi_create_object(env, &c));
  if (set_u32(env, c, "MS_RDONLY", MS_RDONLY) || set_u32(env, c, "MS_NOSUID", MS_NOSUID) ||
      set_u32(env, c, "MS_NODEV", MS_NODEV) || set_u32(env, c, "MS_NOEXEC", MS_NOEXEC) ||
      set_u32(env, c, "MS_NOATIME", MS_NOATIME) || set_u32(env, c, "MS_BIND", MS_BIND) ||
      set_u32(env, c, "MS_REC", MS_REC) || set_u32(env, c, "MS_PRIVATE", MS_PRIVATE) ||
      set_u32(env, c, "MS_REMOUNT", MS_REMOUNT) || set_u32(env, c, "MS_SILENT", MS_SILENT) ||
      set_u32(env, c, "MNT_FORCE", MNT_FORCE) || set_u32(env, c, "MNT_DETACH", MNT_DETACH) ||
      set_u32(env, c, "MNT_EXPIRE", MNT_EXPIRE) || set_u32(env, c, "UMOUNT_NOFOLLOW", UMOUNT_NOFOLLOW)) {
    napi_throw_error(env, "ERR_NAPI", "cannot set constants");
    return NULL;
  }
  CHECK(napi_set_named_property(env, exports, "constants", c));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
