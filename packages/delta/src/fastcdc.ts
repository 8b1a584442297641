/**
 * FastCDC (Xia et al., USENIX ATC 2016) as this format fixes it: a gear rolling hash
 * `fp = (fp << 1) + GEAR[byte]` over 32-bit integers, cut points skipped for the first `min` bytes of a
 * chunk, normalized chunking level 2: up to `avg` bytes a cut needs the top log2(avg)+2 bits of fp to be
 * zero (harder), after it the top log2(avg)-2 bits (easier), and a chunk ends at `max` regardless. The top
 * bits of fp depend on the last 32 bytes only, so a cut depends on local content: an insertion moves the
 * cut points near it and no others, which is what lets a new file reuse the chunks of an old one.
 *
 * `cutBuffer` is the whole hot loop; `chunkStream` feeds it a file in large reads and hashes each chunk.
 */
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { GEAR } from './gear.js'
import { IndexLimitError } from './errors.js'
import { DEFAULT_AVG_CHUNK, DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK, MAX_CHUNK_LENGTH, MIN_CHUNK_FLOOR } from './constants.js'

export interface ChunkParams { min: number, avg: number, max: number }

export const DEFAULT_PARAMS: ChunkParams = Object.freeze({ min: DEFAULT_MIN_CHUNK, avg: DEFAULT_AVG_CHUNK, max: DEFAULT_MAX_CHUNK })

/** Throws IndexLimitError unless MIN_CHUNK_FLOOR <= min < avg < max <= MAX_CHUNK_LENGTH and avg is a power of two >= 2^8. */
export function checkParams (p: ChunkParams, what = 'chunk parameters'): void {
  const ok = [p.min, p.avg, p.max].every(x => Number.isSafeInteger(x)) &&
    p.min >= MIN_CHUNK_FLOOR && p.min < p.avg && p.avg < p.max && p.max <= MAX_CHUNK_LENGTH &&
    p.avg >= 256 && (p.avg & (p.avg - 1)) === 0
  if (!ok) throw new IndexLimitError(`${what}: min ${p.min}, avg ${p.avg}, max ${p.max}: need ${MIN_CHUNK_FLOOR} <= min < avg < max <= ${MAX_CHUNK_LENGTH}, avg a power of two`)
}

/** The two masks of normalized chunking (level 2) as int32: the top bits that must be zero for a cut. */
export function masks (avg: number): { small: number, large: number } {
  const bits = Math.round(Math.log2(avg))
  const top = (k: number): number => ~((1 << (32 - k)) - 1)
  return { small: top(bits + 2), large: top(bits - 2) }
}

/**
 * Chunk lengths of `buf[0, end)`, in order, appended to `out`. Without `eof` the bytes after the last cut that
 * could still be moved by more data (fewer than `max`) are left unchunked; returns the bytes consumed.
 */
export function cutBuffer (buf: Uint8Array, end: number, eof: boolean, p: ChunkParams, out: number[]): number {
  const { small, large } = masks(p.avg)
  const { min, avg, max } = p
  const gear = GEAR
  let start = 0
  while (start < end) {
    const n = end - start
    if (!eof && n < max) break
    if (n <= min) { out.push(n); start = end; break }
    const limit = n < max ? n : max
    const normal = avg < limit ? avg : limit
    let fp = 0
    let i = start + min
    const normalEnd = start + normal
    const limitEnd = start + limit
    let cut = limitEnd
    for (; i < normalEnd; i++) {
      fp = ((fp << 1) + gear[buf[i]!]!) | 0
      if ((fp & small) === 0) { cut = i + 1; break }
    }
    if (cut === limitEnd && i === normalEnd) {
      for (; i < limitEnd; i++) {
        fp = ((fp << 1) + gear[buf[i]!]!) | 0
        if ((fp & large) === 0) { cut = i + 1; break }
      }
    }
    out.push(cut - start)
    start = cut
  }
  return start
}

let native: Promise<Cutter | undefined> | undefined

/**
 * The C loop of @guoce/native-cdc as a Cutter (same cut points: packages/delta/test/native.spec.ts), or
 * undefined when the addon is not built or GUOCE_CDC=js: then the JS loop above is used.
 */
export async function nativeCutter (): Promise<Cutter | undefined> {
  if (process.env.GUOCE_CDC === 'js') return undefined
  native ??= (async () => {
    try {
      // by a name TypeScript does not follow: the addon is optional, this package builds without it
      const name = '@guoce/native-cdc'
      const m = await import(name) as { cut: (buf: Uint8Array, end: number, eof: boolean, min: number, avg: number, max: number, gear: Int32Array, out: Uint32Array) => number }
      let scratch = new Uint32Array(0)
      const cutter: Cutter = (buf, end, eof, p, out) => {
        const need = Math.floor(end / p.min) + 1
        if (scratch.length < need) scratch = new Uint32Array(need)
        const n = m.cut(buf, end, eof, p.min, p.avg, p.max, GEAR, scratch)
        let used = 0
        for (let i = 0; i < n; i++) { out.push(scratch[i]!); used += scratch[i]! }
        return used
      }
      return cutter
    } catch {
      return undefined
    }
  })()
  return await native
}

/** One chunk of a file as the chunker found it. */
export interface Chunk { offset: number, length: number, digest: Buffer }

/** Bytes read from a file at a time by chunkFile. @default 8 MiB */
export const READ_BUFFER = 8 * 1024 * 1024

/** The chunker as a function: the JS one, or an equivalent native one (same signature, same output). */
export type Cutter = (buf: Uint8Array, end: number, eof: boolean, p: ChunkParams, out: number[]) => number

export interface ChunkFileResult { size: number, sha256: Buffer, chunks: Chunk[] }

/**
 * Every chunk of the file at `path` with its sha256, and the file's size and sha256. `maxChunks` bounds the
 * list (IndexLimitError past it). `hash: false` skips the per-chunk sha256 (benchmarks of the cut points alone).
 */
export async function chunkFile (path: string, p: ChunkParams = DEFAULT_PARAMS, o: { maxChunks?: number, signal?: AbortSignal, cutter?: Cutter, hash?: boolean } = {}): Promise<ChunkFileResult> {
  checkParams(p)
  const cut = o.cutter ?? await nativeCutter() ?? cutBuffer
  const hashChunks = o.hash !== false
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(Math.max(READ_BUFFER, 2 * p.max))
    const whole = createHash('sha256')
    const chunks: Chunk[] = []
    let have = 0 // bytes in buf not yet chunked, from buf[0]
    let fileOffset = 0 // file offset of buf[0]
    let eof = false
    const lengths: number[] = []
    while (!eof || have > 0) {
      o.signal?.throwIfAborted()
      while (!eof && have < buf.length) {
        const { bytesRead } = await fh.read(buf, have, buf.length - have, fileOffset + have)
        if (bytesRead === 0) eof = true
        else { whole.update(buf.subarray(have, have + bytesRead)); have += bytesRead }
      }
      lengths.length = 0
      const used = cut(buf, have, eof, p, lengths)
      let at = 0
      for (const len of lengths) {
        chunks.push({ offset: fileOffset + at, length: len, digest: hashChunks ? createHash('sha256').update(buf.subarray(at, at + len)).digest() : EMPTY })
        at += len
      }
      if (o.maxChunks !== undefined && chunks.length > o.maxChunks) throw new IndexLimitError(`${path}: more than ${o.maxChunks} chunks (the index holds at most that many): use a larger average chunk`)
      buf.copy(buf, 0, used, have)
      have -= used
      fileOffset += used
      if (eof && have === 0) break
    }
    return { size: fileOffset, sha256: whole.digest(), chunks }
  } finally {
    await fh.close()
  }
}

const EMPTY = Buffer.alloc(0)
