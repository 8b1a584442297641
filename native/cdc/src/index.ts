/**
 * @guoce/native-cdc — the FastCDC cut-point loop of @guoce/delta in C (N-API). @guoce/delta loads it when it
 * is built and falls back to its own JS loop otherwise; both give the same cut points.
 *
 * ```ts
 * import { cut } from '@guoce/native-cdc'
 * const out = new Uint32Array(Math.floor(end / min) + 1)
 * const n = cut(buf, end, eof, min, avg, max, GEAR, out) // out[0..n) = chunk lengths
 * ```
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

interface Addon {
  cut: (buf: Uint8Array, end: number, eof: boolean, min: number, avg: number, max: number, gear: Int32Array, out: Uint32Array) => number
}

// this module runs as dist/src/index.js; node-gyp builds into build/Release at the package root
const addonPath = fileURLToPath(new URL('../../build/Release/guoce_cdc.node', import.meta.url))
if (!existsSync(addonPath)) {
  throw new Error(`@guoce/native-cdc: ${addonPath} is missing; build it with \`npm run build\` (node-gyp, needs gcc, make, python3 and Node headers)`)
}
const addon = createRequire(import.meta.url)(addonPath) as Addon

/** Chunk lengths of buf[0, end) into `out` (which must hold floor(end / min) + 1); returns how many. */
export function cut (buf: Uint8Array, end: number, eof: boolean, min: number, avg: number, max: number, gear: Int32Array, out: Uint32Array): number {
  return addon.cut(buf, end, eof, min, avg, max, gear, out)
}
