/**
 * @guoce/native-crypto — AES-256-GCM into caller-owned buffers (N-API addon in C over the OpenSSL that
 * Node.js exports to addons). node:crypto returns a new buffer from every `update`; a data channel
 * seals and opens every piece byte, and allocating those buffers is what drove V8's major collections
 * (bench/fanout). With this, outputs come from a buffer pool and openings are in place.
 *
 * ```ts
 * import { seal, open } from '@guoce/native-crypto'
 * const tag = Buffer.alloc(16)
 * seal(key, nonce, aad, [header, body], out, tag)   // out.byteLength === header + body
 * if (!open(key, nonce, aad, out, tag)) throw new Error('forged')  // out now holds the plaintext
 * ```
 * Interoperates with node:crypto's `aes-256-gcm` (same key, 12-byte nonce, additional data, 16-byte tag).
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

interface Addon {
  seal: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, inputs: Uint8Array[], out: Uint8Array, tag: Uint8Array) => void
  open: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array) => boolean
  trim: () => boolean
}

// this module runs as dist/src/index.js; node-gyp builds into build/Release at the package root
const addonPath = fileURLToPath(new URL('../../build/Release/guoce_gcm.node', import.meta.url))
if (!existsSync(addonPath)) {
  throw new Error(`@guoce/native-crypto: ${addonPath} is missing; build it with \`npm run build\` (node-gyp, needs gcc, make, python3 and Node headers)`)
}
const addon = createRequire(import.meta.url)(addonPath) as Addon

/**
 * Encrypt the concatenation of `inputs` into `out` (exactly their total length; may be one of the
 * inputs for in-place) under a 32-byte key and 12-byte nonce, authenticating `aad`; the 16-byte tag
 * goes to `tag`. Throws on wrong sizes.
 */
export function seal (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, inputs: Uint8Array[], out: Uint8Array, tag: Uint8Array): void {
  addon.seal(key, nonce, aad, inputs, out, tag)
}

/**
 * Decrypt `data` in place and check `tag`. False when the record is not authentic: `data` then holds
 * bytes nobody may use.
 */
export function open (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean {
  return addon.open(key, nonce, aad, data, tag)
}

/**
 * Give the C heap's free memory back to the OS (glibc `malloc_trim(0)`); true when some was released.
 * Buffers freed after an attack otherwise stay resident in the allocator's arenas.
 */
export function trimHeap (): boolean {
  return addon.trim()
}
