/**
 * Byte source plumbing for layer conversion: compression autodetection (gzip, zstd, plain),
 * digests of the compressed and uncompressed streams, an expansion cap, and an exact-read buffer.
 */
import { createHash, type Hash } from 'node:crypto'
import { createGunzip, createZstdDecompress } from 'node:zlib'
import { Readable } from 'node:stream'
import { CorruptLayerError, LayerTooLargeError, TruncatedTarError } from '../errors.js'

export type Compression = 'gzip' | 'zstd' | 'none'

const ZLIB_CHUNK = 1024 * 1024

export interface DecodeResult {
  compression: Compression
  /** Uncompressed bytes, in order. */
  stream: AsyncIterable<Buffer>
  /** sha256 of the raw (compressed) input, hex; valid after `stream` is fully consumed. */
  compressedDigest: () => string
  compressedSize: () => number
  /** sha256 of the uncompressed stream (the OCI DiffID), hex, when computed (plain tars, or `diffId: true`). */
  diffId: () => string | undefined
  uncompressedSize: () => number
}

/** Looks at the first bytes of `source` and returns the uncompressed stream. */
export async function decodeLayer (source: AsyncIterable<Uint8Array>, opts: { maxSize: number, diffId?: boolean, signal?: AbortSignal }): Promise<DecodeResult> {
  const it = source[Symbol.asyncIterator]()
  const head: Buffer[] = []
  let headLen = 0
  let ended = false
  while (headLen < 4) {
    const r = await it.next()
    if (r.done === true) { ended = true; break }
    const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
    head.push(b)
    headLen += b.length
  }
  const first = Buffer.concat(head)
  const compression: Compression = first[0] === 0x1f && first[1] === 0x8b
    ? 'gzip'
    : first.length >= 4 && first.readUInt32LE(0) === 0xfd2fb528 ? 'zstd' : 'none'
  const cHash = createHash('sha256')
  let cSize = 0
  const raw = async function * (): AsyncGenerator<Buffer> {
    cHash.update(first)
    cSize += first.length
    yield first
    if (ended) return
    for (;;) {
      const r = await it.next()
      if (r.done === true) return
      const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
      cHash.update(b)
      cSize += b.length
      yield b
    }
  }
  const uHash: Hash | undefined = compression === 'none' ? cHash : opts.diffId === true ? createHash('sha256') : undefined
  let uSize = 0
  let decoded: AsyncIterable<Buffer>
  if (compression === 'none') {
    decoded = raw()
  } else {
    const z = compression === 'gzip' ? createGunzip({ chunkSize: ZLIB_CHUNK }) : createZstdDecompress({ chunkSize: ZLIB_CHUNK })
    const input = Readable.from(raw(), { objectMode: false })
    input.on('error', (err) => z.destroy(err))
    input.pipe(z)
    decoded = z
  }
  const maxSize = opts.maxSize
  const out = async function * (): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of decoded) {
        opts.signal?.throwIfAborted()
        uSize += chunk.length
        if (uSize > maxSize) throw new LayerTooLargeError(`layer expands past the cap of ${maxSize} bytes`)
        if (uHash !== cHash) uHash?.update(chunk)
        yield chunk
      }
    } catch (err: any) {
      if (err?.code !== undefined && typeof err.code === 'string' && err.code.startsWith('Z_')) {
        throw new CorruptLayerError(`${compression} stream is corrupt: ${err.message as string}`, { cause: err })
      }
      if (err?.code === 'ZSTD_error_corruption_detected' || (typeof err?.code === 'string' && err.code.startsWith('ZSTD_'))) {
        throw new CorruptLayerError(`zstd stream is corrupt: ${err.message as string}`, { cause: err })
      }
      if (typeof err?.message === 'string' && /unexpected end of file/i.test(err.message)) {
        throw new CorruptLayerError(`${compression} stream is truncated: ${err.message as string}`, { cause: err })
      }
      throw err
    } finally {
      if (decoded !== undefined && 'destroy' in decoded) (decoded as unknown as { destroy: () => void }).destroy()
    }
  }
  let cDigest: string | undefined
  let uDigest: string | undefined
  return {
    compression,
    stream: out(),
    compressedDigest: () => (cDigest ??= cHash.copy().digest('hex')),
    compressedSize: () => cSize,
    diffId: () => uHash === undefined ? undefined : (uDigest ??= uHash.copy().digest('hex')),
    uncompressedSize: () => uSize
  }
}

/** Exact reads over an async stream of buffers; slices are handed out without copying where possible. */
export class ByteReader {
  private readonly it: AsyncIterator<Buffer>
  /** Unconsumed buffers; the first one starts at `pos`. */
  private readonly bufs: Buffer[] = []
  private pos = 0
  private avail = 0
  private eof = false
  /** Bytes consumed so far. */
  offset = 0

  constructor (source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]()
  }

  private async fill (): Promise<boolean> {
    if (this.eof) return false
    for (;;) {
      const r = await this.it.next()
      if (r.done === true) { this.eof = true; return false }
      if (r.value.length === 0) continue
      this.bufs.push(r.value)
      this.avail += r.value.length
      return true
    }
  }

  /** Takes up to n bytes from the first buffer (no copy). */
  private take (n: number): Buffer {
    const head = this.bufs[0]!
    const end = Math.min(head.length, this.pos + n)
    const out = head.subarray(this.pos, end)
    this.pos = end
    if (this.pos === head.length) { this.bufs.shift(); this.pos = 0 }
    this.avail -= out.length
    this.offset += out.length
    return out
  }

  /** Reads exactly n bytes, or returns what is left (possibly 0 bytes) at end of stream. */
  async readUpTo (n: number): Promise<Buffer> {
    while (this.avail < n) {
      if (!await this.fill()) break
    }
    const want = Math.min(n, this.avail)
    if (want === 0) return Buffer.alloc(0)
    if (this.bufs[0]!.length - this.pos >= want) return this.take(want)
    const out = Buffer.allocUnsafe(want)
    let o = 0
    while (o < want) {
      const part = this.take(want - o)
      part.copy(out, o)
      o += part.length
    }
    return out
  }

  /** Reads exactly n bytes or throws TruncatedTarError. */
  async readExact (n: number, what: string): Promise<Buffer> {
    const b = await this.readUpTo(n)
    if (b.length < n) throw new TruncatedTarError(`tar stream ended in ${what} at byte ${this.offset}: ${n - b.length} bytes missing`)
    return b
  }

  /** Yields n bytes in slices (no copy), or throws TruncatedTarError. */
  async * readSlices (n: number, what: string): AsyncGenerator<Buffer> {
    let left = n
    while (left > 0) {
      if (this.avail === 0 && !await this.fill()) {
        throw new TruncatedTarError(`tar stream ended in ${what} at byte ${this.offset}: ${left} bytes missing`)
      }
      const out = this.take(left)
      left -= out.length
      yield out
    }
  }

  async skip (n: number, what: string): Promise<void> {
    let left = n
    while (left > 0) {
      if (this.avail === 0 && !await this.fill()) {
        throw new TruncatedTarError(`tar stream ended in ${what} at byte ${this.offset}: ${left} bytes missing`)
      }
      left -= this.take(left).length
    }
  }

  /** Consumes the rest of the stream (so decompressors verify their trailers); returns the byte count. */
  async drain (): Promise<number> {
    let n = 0
    while (this.avail > 0 || await this.fill()) n += this.take(this.avail).length
    return n
  }
}
