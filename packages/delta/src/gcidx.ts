/**
 * The .gcidx file (doc/FORMAT.md, "Chunk index"): a content-defined chunk index of one file. Little endian.
 *
 *   0   8  magic "GUOCEIDX"
 *   8   4  version (1)
 *  12   4  algorithm (1: FastCDC, gear table v1, normalized chunking level 2)
 *  16   4  min chunk length     20  4  average (a power of two)     24  4  max chunk length
 *  28   4  chunk count N
 *  32   8  file size
 *  40  32  sha256 of the whole file
 *  72  44 x N entries: u64 offset, u32 length, 32-byte sha256 of the chunk
 *
 * The file is exactly 72 + 44 N bytes. Entries tile the file: the first starts at 0, each starts where the
 * previous ended, the last ends at the file size; every length is in [1, max] and at least `min` except the
 * last one's. parseIndex treats the bytes as hostile: it checks the header and the exact length before it
 * allocates anything for the entries, then every entry.
 */
import { createHash } from 'node:crypto'
import { checkParams, type ChunkFileResult, type ChunkParams } from './fastcdc.js'
import { IndexFormatError, IndexLimitError } from './errors.js'
import { ALGORITHM_FASTCDC_V1, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES, INDEX_MAGIC, INDEX_VERSION, MAX_INDEX_BYTES, MAX_INDEX_CHUNKS } from './constants.js'

/** A parsed index, compact: chunk i spans [offsets[i], offsets[i] + lengths[i]) with sha256 digests[32i, 32i+32). */
export interface ChunkIndex {
  params: ChunkParams
  size: number
  sha256: Buffer
  count: number
  offsets: Float64Array
  lengths: Uint32Array
  digests: Buffer
}

/** sha256 of chunk i (a view into the index). */
export function chunkDigest (ix: ChunkIndex, i: number): Buffer {
  return ix.digests.subarray(i * 32, i * 32 + 32)
}

/** The index of a chunked file (chunkFile's result). */
export function indexOf (r: ChunkFileResult, params: ChunkParams): ChunkIndex {
  checkParams(params)
  if (r.chunks.length > MAX_INDEX_CHUNKS) throw new IndexLimitError(`${r.chunks.length} chunks: an index holds at most ${MAX_INDEX_CHUNKS}`)
  const n = r.chunks.length
  const ix: ChunkIndex = { params: { ...params }, size: r.size, sha256: Buffer.from(r.sha256), count: n, offsets: new Float64Array(n), lengths: new Uint32Array(n), digests: Buffer.alloc(n * 32) }
  r.chunks.forEach((c, i) => { ix.offsets[i] = c.offset; ix.lengths[i] = c.length; c.digest.copy(ix.digests, i * 32) })
  checkTiling(ix)
  return ix
}

export function encodeIndex (ix: ChunkIndex): Buffer {
  checkTiling(ix)
  const out = Buffer.alloc(INDEX_HEADER_BYTES + ix.count * INDEX_ENTRY_BYTES)
  out.write(INDEX_MAGIC, 0, 'latin1')
  out.writeUInt32LE(INDEX_VERSION, 8)
  out.writeUInt32LE(ALGORITHM_FASTCDC_V1, 12)
  out.writeUInt32LE(ix.params.min, 16)
  out.writeUInt32LE(ix.params.avg, 20)
  out.writeUInt32LE(ix.params.max, 24)
  out.writeUInt32LE(ix.count, 28)
  out.writeBigUInt64LE(BigInt(ix.size), 32)
  ix.sha256.copy(out, 40)
  for (let i = 0; i < ix.count; i++) {
    const at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES
    out.writeBigUInt64LE(BigInt(ix.offsets[i]!), at)
    out.writeUInt32LE(ix.lengths[i]!, at + 8)
    ix.digests.copy(out, at + 12, i * 32, i * 32 + 32)
  }
  return out
}

/**
 * Parses a .gcidx, hostile input: IndexFormatError naming the first fault (truncated, trailing bytes, bad
 * magic, unknown version or algorithm, parameters or counts out of bounds, a gap or overlap between chunks,
 * a chunk too long or too short, chunks that do not add up to the file size). `what` names it in messages.
 */
export function parseIndex (b: Uint8Array, what = 'index'): ChunkIndex {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  const bad = (msg: string): never => { throw new IndexFormatError(`${what}: ${msg}`) }
  if (buf.length > MAX_INDEX_BYTES) bad(`${buf.length} bytes: an index is at most ${MAX_INDEX_BYTES} bytes`)
  if (buf.length < INDEX_HEADER_BYTES) bad(`truncated: ${buf.length} bytes, the header alone is ${INDEX_HEADER_BYTES}`)
  if (buf.toString('latin1', 0, 8) !== INDEX_MAGIC) bad(`not a chunk index (magic is not ${INDEX_MAGIC})`)
  const version = buf.readUInt32LE(8)
  if (version !== INDEX_VERSION) bad(`version ${version}: this guoce reads version ${INDEX_VERSION}`)
  const algorithm = buf.readUInt32LE(12)
  if (algorithm !== ALGORITHM_FASTCDC_V1) bad(`chunking algorithm ${algorithm} is unknown (1 = FastCDC v1)`)
  const params = { min: buf.readUInt32LE(16), avg: buf.readUInt32LE(20), max: buf.readUInt32LE(24) }
  try { checkParams(params, 'declared chunk parameters') } catch (err) { bad((err as Error).message) }
  const count = buf.readUInt32LE(28)
  if (count > MAX_INDEX_CHUNKS) bad(`declares ${count} chunks: at most ${MAX_INDEX_CHUNKS}`)
  const size64 = buf.readBigUInt64LE(32)
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) bad(`declares a file of ${size64} bytes`)
  const size = Number(size64)
  // bounds implied by the count: each chunk holds 1..max bytes, all but the last >= min
  if (count === 0 ? size !== 0 : (size > count * params.max || size < (count - 1) * params.min + 1)) bad(`a file of ${size} bytes cannot be ${count} chunks of ${params.min}..${params.max} bytes`)
  const expected = INDEX_HEADER_BYTES + count * INDEX_ENTRY_BYTES
  if (buf.length < expected) bad(`truncated: ${buf.length} bytes, ${count} chunks need ${expected}`)
  if (buf.length > expected) bad(`${buf.length - expected} bytes after the last of ${count} chunks`)
  const ix: ChunkIndex = { params, size, sha256: Buffer.from(buf.subarray(40, 72)), count, offsets: new Float64Array(count), lengths: new Uint32Array(count), digests: Buffer.alloc(count * 32) }
  for (let i = 0; i < count; i++) {
    const at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES
    const off = buf.readBigUInt64LE(at)
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) bad(`chunk ${i}: offset ${off}`)
    ix.offsets[i] = Number(off)
    ix.lengths[i] = buf.readUInt32LE(at + 8)
    buf.copy(ix.digests, i * 32, at + 12, at + 44)
  }
  try { checkTiling(ix) } catch (err) { bad((err as Error).message) }
  return ix
}

/** Chunks tile [0, size) exactly, each 1..max bytes and >= min but the last. Throws IndexFormatError. */
function checkTiling (ix: ChunkIndex): void {
  let pos = 0
  for (let i = 0; i < ix.count; i++) {
    const off = ix.offsets[i]!; const len = ix.lengths[i]!
    if (off < pos) throw new IndexFormatError(`chunk ${i} at ${off} overlaps the previous one (which ends at ${pos})`)
    if (off > pos) throw new IndexFormatError(`a gap before chunk ${i}: it starts at ${off}, the previous one ends at ${pos}`)
    if (len < 1 || len > ix.params.max) throw new IndexFormatError(`chunk ${i}: length ${len} is outside 1..${ix.params.max}`)
    if (len < ix.params.min && i !== ix.count - 1) throw new IndexFormatError(`chunk ${i}: length ${len} is below the minimum ${ix.params.min} and it is not the last`)
    pos = off + len
    if (pos > ix.size) throw new IndexFormatError(`chunk ${i} ends at ${pos}, past the file size ${ix.size}`)
  }
  if (pos !== ix.size) throw new IndexFormatError(`chunks cover ${pos} bytes of a ${ix.size}-byte file`)
}

/** `sha256:HEX` of the whole file an index describes. */
export function fileDigest (ix: ChunkIndex): string { return `sha256:${ix.sha256.toString('hex')}` }

/** sha256 of bytes (a chunk check). */
export function sha256 (b: Uint8Array): Buffer { return createHash('sha256').update(b).digest() }
