/**
 * Reusable piece buffers. A download moves every byte through a piece-sized buffer twice (in from a
 * parent, out to a child); allocating those per piece makes V8 account hundreds of MiB of short-lived
 * external memory, and that accounting is what triggers its major collections (measured in
 * bench/fanout: a quarter of the machine's CPU in marking and sweeping). A pool keeps them.
 *
 * Ownership: `acquire` hands a buffer to exactly one owner, who calls the `release` it came with once
 * nothing reads or writes it any more (a socket write has completed, a file write has returned).
 * A buffer never released is simply collected. `release` is idempotent.
 */
export interface Lease {
  readonly buf: Buffer
  release: () => void
}

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>()
  private retained = 0

  /** @param maxRetainedBytes bytes kept for reuse across all sizes; beyond it released buffers are dropped */
  constructor (readonly maxRetainedBytes = 64 * 1024 * 1024) {}

  /** A buffer of exactly `size` bytes (contents undefined). */
  acquire (size: number): Lease {
    const list = this.free.get(size)
    let buf = list?.pop()
    if (buf != null) this.retained -= size
    buf ??= Buffer.allocUnsafeSlow(size)
    let held = true
    return {
      buf,
      release: () => {
        if (!held) return
        held = false
        this.put(buf)
      }
    }
  }

  /** bytes currently kept for reuse */
  get retainedBytes (): number { return this.retained }

  private put (buf: Buffer): void {
    if (this.retained + buf.byteLength > this.maxRetainedBytes) return
    let list = this.free.get(buf.byteLength)
    if (list == null) this.free.set(buf.byteLength, list = [])
    list.push(buf)
    this.retained += buf.byteLength
  }
}

/** The process's pool for piece buffers. */
export const piecePool = new BufferPool()
