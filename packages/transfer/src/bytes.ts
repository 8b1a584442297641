import { Uint8ArrayList } from 'uint8arraylist'
import { ProtocolError } from '@guoce/interface'

/**
 * Pulls exact byte counts out of a libp2p stream's async iterator.
 * Owns the iterator: nothing else may read the stream while a ByteReader is in use.
 */
export class ByteReader {
  private readonly buf = new Uint8ArrayList()
  private readonly it: AsyncIterator<Uint8Array | Uint8ArrayList>
  private ended = false

  constructor (source: AsyncIterable<Uint8Array | Uint8ArrayList>) {
    this.it = source[Symbol.asyncIterator]()
  }

  /** Make sure `n` bytes are buffered; false when the stream ended first. */
  private async fill (n: number): Promise<boolean> {
    while (this.buf.byteLength < n) {
      if (this.ended) return false
      const r = await this.it.next()
      if (r.done === true) { this.ended = true; return false }
      this.buf.append(r.value)
    }
    return true
  }

  /** Exactly `n` bytes as one contiguous Uint8Array; throws ProtocolError on a short stream. */
  async exact (n: number): Promise<Uint8Array> {
    if (!await this.fill(n)) throw new ProtocolError(`stream ended ${n - this.buf.byteLength} bytes short`)
    const out = this.buf.subarray(0, n)
    this.buf.consume(n)
    return out
  }

  /** An unsigned varint; null at a clean end of stream. */
  async varint (): Promise<number | null> {
    let value = 0
    let shift = 0
    for (let i = 0; i < 8; i++) {
      if (!await this.fill(1)) {
        if (i === 0) return null
        throw new ProtocolError('stream ended inside a varint')
      }
      const b = this.buf.get(0)
      this.buf.consume(1)
      value += (b & 0x7f) * 2 ** shift
      if ((b & 0x80) === 0) return value
      shift += 7
    }
    throw new ProtocolError('varint too long')
  }

  /** A varint length-prefixed message; null at a clean end of stream. */
  async lp (max: number): Promise<Uint8Array | null> {
    const len = await this.varint()
    if (len == null) return null
    if (len > max) throw new ProtocolError(`message of ${len} bytes exceeds limit ${max}`)
    return await this.exact(len)
  }

  async return (): Promise<void> {
    await this.it.return?.()
  }
}

export function encodeVarint (n: number): Uint8Array {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return Uint8Array.from(out)
}

export function lpEncode (msg: Uint8Array): Uint8ArrayList {
  return new Uint8ArrayList(encodeVarint(msg.byteLength), msg)
}
