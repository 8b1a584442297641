/*
 * The FastCDC cut-point loop of @guoce/delta (packages/delta/src/fastcdc.ts, cutBuffer) in C: the same gear
 * hash over 32-bit integers, the same skipped minimum, the same two masks of normalized chunking, so the
 * same cut points (packages/delta/test/native.spec.ts checks them against the JS loop). bench/delta measured
 * the JS loop at about half the speed of sha256 over the same image, so indexing was bound by it.
 *
 *   cut(buf, end, eof, min, avg, max, gear: Int32Array(256), out: Uint32Array) -> number of lengths written
 *     Chunk lengths of buf[0, end) in order into `out`; without `eof`, bytes after the last cut that more
 *     data could still move (fewer than `max`) are left. `out` must hold floor(end / min) + 1 lengths.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>

static napi_value fail(napi_env env, const char* msg) {
  napi_throw_error(env, "ERR_CDC", msg);
  return NULL;
}

static bool typed(napi_env env, napi_value v, napi_typedarray_type want, void** data, size_t* len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type t; napi_value ab; size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok) return false;
  return t == want || (want == napi_uint8_array && t == napi_uint8_clamped_array);
}

static bool u32(napi_env env, napi_value v, uint32_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 4294967295.0 || d != (double)(uint32_t)d) return false;
  *out = (uint32_t)d;
  return true;
}

static napi_value cut(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value a[8];
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != napi_ok || argc != 8) return fail(env, "cut(buf, end, eof, min, avg, max, gear, out)");
  uint8_t* buf; size_t buflen; int32_t* gear; size_t gearlen; uint32_t* out; size_t cap;
  uint32_t end, min, avg, max; bool eof;
  if (!typed(env, a[0], napi_uint8_array, (void**)&buf, &buflen)) return fail(env, "buf must be a Uint8Array");
  if (!u32(env, a[1], &end) || end > buflen) return fail(env, "end must be within buf");
  if (napi_get_value_bool(env, a[2], &eof) != napi_ok) return fail(env, "eof must be a boolean");
  if (!u32(env, a[3], &min) || !u32(env, a[4], &avg) || !u32(env, a[5], &max)) return fail(env, "min, avg, max must be 32-bit counts");
  if (min < 64 || !(min < avg && avg < max) || (avg & (avg - 1)) != 0 || avg < 256) return fail(env, "need 64 <= min < avg < max, avg a power of two >= 256");
  if (!typed(env, a[6], napi_int32_array, (void**)&gear, &gearlen) || gearlen != 256) return fail(env, "gear must be an Int32Array of 256");
  if (!typed(env, a[7], napi_uint32_array, (void**)&out, &cap)) return fail(env, "out must be a Uint32Array");
  if (cap < (size_t)(end / min) + 1) return fail(env, "out is too small: it needs floor(end / min) + 1 entries");

  uint32_t bits = (uint32_t)__builtin_ctz(avg);
  uint32_t small = ~((1u << (32 - (bits + 2))) - 1);
  uint32_t large = ~((1u << (32 - (bits - 2))) - 1);
  const uint32_t* g = (const uint32_t*)gear;
  size_t n_out = 0;
  uint32_t start = 0;
  while (start < end) {
    uint32_t n = end - start;
    if (!eof && n < max) break;
    if (n <= min) { out[n_out++] = n; start = end; break; }
    uint32_t limit = n < max ? n : max;
    uint32_t normal = avg < limit ? avg : limit;
    uint32_t fp = 0;
    uint32_t i = start + min;
    uint32_t normal_end = start + normal, limit_end = start + limit, c = limit_end;
    bool found = false;
    for (; i < normal_end; i++) {
      fp = (fp << 1) + g[buf[i]];
      if ((fp & small) == 0) { c = i + 1; found = true; break; }
    }
    if (!found) {
      for (; i < limit_end; i++) {
        fp = (fp << 1) + g[buf[i]];
        if ((fp & large) == 0) { c = i + 1; break; }
      }
    }
    out[n_out++] = c - start;
    start = c;
  }
  napi_value r;
  napi_create_uint32(env, (uint32_t)n_out, &r);
  return r;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "cut", NAPI_AUTO_LENGTH, cut, NULL, &fn);
  napi_set_named_property(env, exports, "cut", fn);
  return exports;
}
