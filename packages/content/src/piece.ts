import { createHash, webcrypto } from 'node:crypto'
import { PieceDigestMismatchError } from '@guoce/interface'

/**
 * Smallest piece length. Every piece costs a request, a frame, a digest, a report to the scheduler and
 * an announcement to each child; at 256 KiB those per-piece costs were a fifth of a peer's CPU in
 * bench/fanout (128 MiB, 16 peers: 71-73 CPU-s at 256 KiB against 57-63 at 1 MiB). 1 MiB is also the
 * chunk size of the lazy image format (doc/FORMAT.md), so an image blob's chunk maps to whole pieces.
 * @default 1 MiB
 */
export const MIN_PIECE_LENGTH = 1024 * 1024
/**
 * Smallest piece length a request may name (TaskRequest.pieceLength): for tasks read by small ranges,
 * where a whole piece crosses the link for every read that touches it. A lazily mounted image blob
 * reads compressed chunks of a few KiB to 1 MiB at scattered offsets: bench/containerd moved 23 MB of
 * pieces for 13 MB of chunks at 1 MiB, 9 MB at 128 KiB.
 * @default 64 KiB
 */
export const MIN_REQUEST_PIECE_LENGTH = 64 * 1024
/**
 * Largest piece length.
 * @default 16 MiB
 */
export const MAX_PIECE_LENGTH = 16 * 1024 * 1024
/**
 * Target number of pieces per task before clamping: pieces stay small enough for a deep pipeline to fill
 * quickly (a hop costs one piece time), so files above 1 GiB get pieces of length/1024.
 * @default 1024
 */
export const TARGET_PIECE_COUNT = 1024

/**
 * Most pieces of one task (the scheduler's MAX_TASK_PIECES): a named piece length too small for the
 * content is doubled until the count fits.
 * @default 2^20
 */
export const MAX_PIECE_COUNT = 1 << 20

export interface PieceLayout { pieceLength: number, pieceCount: number }

function nextPow2 (n: number): number {
  let p = 1
  while (p < n) p *= 2
  return p
}

/** `n` when it is a piece length a request may name (a power of two in [MIN_REQUEST_PIECE_LENGTH, MAX_PIECE_LENGTH]); else a RangeError. */
export function checkPieceLength (n: number): number {
  if (!Number.isSafeInteger(n) || n < MIN_REQUEST_PIECE_LENGTH || n > MAX_PIECE_LENGTH || (n & (n - 1)) !== 0) {
    throw new RangeError(`piece length ${n} is not a power of two in [${MIN_REQUEST_PIECE_LENGTH}, ${MAX_PIECE_LENGTH}]`)
  }
  return n
}

/** Piece length chosen from the content length: next power of two of len/1024, clamped; or the one a request names. */
export function pieceLayout (contentLength: number, pieceLength?: number): PieceLayout {
  if (!Number.isSafeInteger(contentLength) || contentLength < 0) throw new RangeError(`bad content length ${contentLength}`)
  // a named length grows (to a power of two) where the content would need more than MAX_PIECE_COUNT of them
  const len = pieceLength != null
    ? Math.max(pieceLength, nextPow2(Math.ceil(contentLength / MAX_PIECE_COUNT)))
    : Math.min(MAX_PIECE_LENGTH, Math.max(MIN_PIECE_LENGTH, nextPow2(Math.ceil(contentLength / TARGET_PIECE_COUNT))))
  return { pieceLength: len, pieceCount: contentLength === 0 ? 0 : Math.ceil(contentLength / len) }
}

/** Byte range [start, end) of piece `n`. */
export function pieceRange (n: number, pieceLength: number, contentLength: number): { start: number, end: number } {
  const start = n * pieceLength
  if (n < 0 || start >= contentLength) throw new RangeError(`piece ${n} out of range`)
  return { start, end: Math.min(contentLength, start + pieceLength) }
}

/** Re-hash `data` and compare with the announced digest; throws PieceDigestMismatchError. */
export function verifyPiece (n: number, data: Uint8Array, expected: Uint8Array): void {
  checkPieceDigest(n, createHash('sha256').update(data).digest(), expected)
}

/**
 * verifyPiece with the hashing on the libuv thread pool (WebCrypto), so the thread that receives
 * pieces only copies bytes: sha256 runs at about 1 GB/s here, no faster than the socket (bench/link).
 */
export async function verifyPieceAsync (n: number, data: Uint8Array, expected: Uint8Array): Promise<void> {
  checkPieceDigest(n, new Uint8Array(await webcrypto.subtle.digest('SHA-256', data)), expected)
}

/** Like verifyPiece, for a sha256 already computed over the piece's bytes as they arrived. */
export function checkPieceDigest (n: number, computed: Uint8Array, expected: Uint8Array): void {
  const got = Buffer.from(computed.buffer, computed.byteOffset, computed.byteLength)
  if (got.length !== expected.length || Buffer.compare(got, expected) !== 0) {
    throw new PieceDigestMismatchError(`piece ${n}: sha256 ${got.toString('hex').slice(0, 16)}… does not match announced ${Buffer.from(expected).toString('hex').slice(0, 16)}…`)
  }
}

/** Dense bitmap of pieces. */
export class Bitmap {
  readonly bytes: Uint8Array
  private _count = 0
  constructor (readonly size: number, bytes?: Uint8Array) {
    this.bytes = new Uint8Array(Math.ceil(size / 8))
    if (bytes != null) {
      this.bytes.set(bytes.subarray(0, this.bytes.length))
      for (let i = 0; i < size; i++) if (this.has(i)) this._count++
    }
  }

  has (i: number): boolean { return ((this.bytes[i >> 3] ?? 0) & (1 << (i & 7))) !== 0 }
  set (i: number): boolean {
    if (i < 0 || i >= this.size) throw new RangeError(`bit ${i} out of range`)
    if (this.has(i)) return false
    this.bytes[i >> 3] = (this.bytes[i >> 3] ?? 0) | (1 << (i & 7))
    this._count++
    return true
  }

  get count (): number { return this._count }
  get full (): boolean { return this._count === this.size }
  * missing (): Iterable<number> { for (let i = 0; i < this.size; i++) if (!this.has(i)) yield i }
  * present (): Iterable<number> { for (let i = 0; i < this.size; i++) if (this.has(i)) yield i }
}
