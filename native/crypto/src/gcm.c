/*
 * AES-256-GCM records into caller-owned buffers, with the OpenSSL that Node.js itself carries (its
 * EVP symbols are exported to addons). node:crypto allocates a fresh output buffer per update; on a
 * data channel that is every byte twice, and that allocation is what drives V8's major collections
 * (bench/fanout). Here the caller hands in the output (or decrypts in place) from a buffer pool.
 *
 *   seal(key32, nonce12, aad, inputs: Uint8Array[], out, tag16): out = E(concat(inputs)), tag16 = tag
 *   open(key32, nonce12, aad, data, tag16) -> boolean: data decrypted in place; false when the tag
 *     does not verify (then `data` holds unauthenticated bytes and must be discarded)
 *   trim() -> boolean: glibc's malloc_trim(0): free heap memory of every arena back to the OS (the
 *     buffers an attacker made the process allocate stay resident otherwise; packages/transfer reclaim.ts)
 */
#include <node_api.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static bool bytes_of(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is = false;
  if (napi_is_buffer(env, v, &is) == napi_ok && is) {
    void* d; if (napi_get_buffer_info(env, v, &d, len) != napi_ok) return false;
    *data = d; return true;
  }
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type t; size_t n; void* d; napi_value ab; size_t off;
    if (napi_get_typedarray_info(env, v, &t, &n, &d, &ab, &off) != napi_ok || t != napi_uint8_array) return false;
    *data = d; *len = n; return true;
  }
  return false;
}

static napi_value fail(napi_env env, const char* msg) {
  napi_throw_error(env, "ERR_GCM", msg);
  return NULL;
}

static bool start(EVP_CIPHER_CTX* c, bool enc, const uint8_t* key, const uint8_t* iv, const uint8_t* aad, size_t aadlen) {
  int l;
  if (enc) {
    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) return false;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1) return false;
    if (EVP_EncryptInit_ex(c, NULL, NULL, key, iv) != 1) return false;
    return aadlen == 0 || EVP_EncryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1;
  }
  if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) return false;
  if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1) return false;
  if (EVP_DecryptInit_ex(c, NULL, NULL, key, iv) != 1) return false;
  return aadlen == 0 || EVP_DecryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1;
}

static napi_value seal(napi_env env, napi_callback_info info) {
  size_t argc = 6; napi_value a[6];
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != napi_ok || argc < 6) return fail(env, "seal: 6 arguments");
  uint8_t *key, *iv, *aad, *out, *tag; size_t klen, ivlen, aadlen, outlen, taglen;
  if (!bytes_of(env, a[0], &key, &klen) || klen != 32) return fail(env, "seal: key must be 32 bytes");
  if (!bytes_of(env, a[1], &iv, &ivlen) || ivlen != 12) return fail(env, "seal: nonce must be 12 bytes");
  if (!bytes_of(env, a[2], &aad, &aadlen)) return fail(env, "seal: aad must be bytes");
  if (!bytes_of(env, a[4], &out, &outlen) || outlen > INT32_MAX) return fail(env, "seal: out must be bytes");
  if (!bytes_of(env, a[5], &tag, &taglen) || taglen != 16) return fail(env, "seal: tag must be 16 bytes");
  bool isArray = false; uint32_t n = 0;
  if (napi_is_array(env, a[3], &isArray) != napi_ok || !isArray || napi_get_array_length(env, a[3], &n) != napi_ok) return fail(env, "seal: inputs must be an array");
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  if (c == NULL) return fail(env, "seal: out of memory");
  bool ok = start(c, true, key, iv, aad, aadlen);
  size_t pos = 0;
  for (uint32_t i = 0; ok && i < n; i++) {
    napi_value el; uint8_t* in; size_t inlen; int l = 0;
    if (napi_get_element(env, a[3], i, &el) != napi_ok || !bytes_of(env, el, &in, &inlen) || inlen > outlen - pos) { ok = false; break; }
    if (inlen > 0) ok = EVP_EncryptUpdate(c, out + pos, &l, in, (int)inlen) == 1;
    pos += (size_t)l;
  }
  int l = 0;
  if (ok) ok = EVP_EncryptFinal_ex(c, out + pos, &l) == 1;
  pos += (size_t)l;
  if (ok) ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(c);
  if (!ok || pos != outlen) return fail(env, "seal: inputs do not fill out, or the cipher failed");
  return NULL;
}

static napi_value open_(napi_env env, napi_callback_info info) {
  size_t argc = 5; napi_value a[5];
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != napi_ok || argc < 5) return fail(env, "open: 5 arguments");
  uint8_t *key, *iv, *aad, *data, *tag; size_t klen, ivlen, aadlen, len, taglen;
  if (!bytes_of(env, a[0], &key, &klen) || klen != 32) return fail(env, "open: key must be 32 bytes");
  if (!bytes_of(env, a[1], &iv, &ivlen) || ivlen != 12) return fail(env, "open: nonce must be 12 bytes");
  if (!bytes_of(env, a[2], &aad, &aadlen)) return fail(env, "open: aad must be bytes");
  if (!bytes_of(env, a[3], &data, &len) || len > INT32_MAX) return fail(env, "open: data must be bytes");
  if (!bytes_of(env, a[4], &tag, &taglen) || taglen != 16) return fail(env, "open: tag must be 16 bytes");
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  if (c == NULL) return fail(env, "open: out of memory");
  int l = 0, lf = 0;
  bool ok = start(c, false, key, iv, aad, aadlen);
  if (ok && len > 0) ok = EVP_DecryptUpdate(c, data, &l, data, (int)len) == 1;
  if (ok) ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
  bool verified = ok && EVP_DecryptFinal_ex(c, data + l, &lf) == 1;
  EVP_CIPHER_CTX_free(c);
  napi_value r;
  napi_get_boolean(env, verified, &r);
  return r;
}

static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  bool released = false;
#ifdef __GLIBC__
  released = malloc_trim(0) == 1;
#endif
  napi_value r;
  napi_get_boolean(env, released, &r);
  return r;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
    { "seal", NULL, seal, NULL, NULL, NULL, napi_default, NULL },
    { "open", NULL, open_, NULL, NULL, NULL, napi_default, NULL },
    { "trim", NULL, trim, NULL, NULL, NULL, napi_default, NULL }
  };
  napi_define_properties(env, exports, 3, d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
