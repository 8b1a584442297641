import { Uint8ArrayList } from 'uint8arraylist'
import { ProtocolError } from '@guoce/interface'

/**
 * Marks a read error the sender is not to be blamed for (its stream was idle, or the receiver's shared
 * budget was spent by others): the stream ends, the host is not dropped for it.
 */
export function blameless<E extends Error> (err: E): E & { blameless: true } {
  return Object.assign(err, { blameless: true as const })
}

/** true for errors marked with `blameless` */
export function isBlameless (err: unknown): boolean {
  return (err as { blameless?: unknown } | null)?.blameless === true
}

/** Deadlines of one length-prefixed read (ByteReader.lp). */
export interface ReadDeadlines {
  /** the first byte of the message must arrive within this time */
  idleMs?: number
  /** once its first byte arrived, the whole message must arrive within this time */
  stallMs?: number
}

/** Bytes of messages being received, shared by many readers: a message that does not fit is refused. */
export interface ReadBudget {
  /** reserve `n` bytes; false when they do not fit */
  take(n: number): boolean
  give(n: number): void
}

/** A ReadBudget of `limit` bytes. */
export function readBudget (limit: number): ReadBudget & { readonly used: number } {
  let used = 0
  return {
    get used () { return used },
    take (n) { if (used + n > limit) return false; used += n; return true },
    give (n) { used -= n }
  }
}

/**
 * Pulls exact byte counts out of a libp2p stream's async iterator.
 * Owns the iterator: nothing else may read the stream while a ByteReader is in use.
 * A read with a deadline throws ProtocolError when it passes; the caller then drops the stream.
 */
export class ByteReader {
  private readonly buf = new Uint8ArrayList()
  private readonly it: AsyncIterator<Uint8Array | Uint8ArrayList>
  private ended = false
  /** the sender is not at fault when the current deadline passes (an idle stream, not a half-sent message) */
  private deadlineBlameless = false
  /** a pull of the iterator that outlived a deadline (the stream is being dropped) */
  private pending: Promise<IteratorResult<Uint8Array | Uint8ArrayList>> | undefined
  /** absolute time (ms) the current read must be done by; undefined = no deadline */
  private deadline: number | undefined
  private deadlineReason = ''

  constructor (source: AsyncIterable<Uint8Array | Uint8ArrayList>) {
    this.it = source[Symbol.asyncIterator]()
  }

  /** bytes received and not yet consumed */
  get buffered (): number { return this.buf.byteLength }

  private async pull (): Promise<IteratorResult<Uint8Array | Uint8ArrayList>> {
    const p = this.pending ?? this.it.next()
    this.pending = p
    const deadline = this.deadline
    if (deadline == null) { const r = await p; this.pending = undefined; return r }
    p.catch(() => {})
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(this.deadlineBlameless ? blameless(new ProtocolError(this.deadlineReason)) : new ProtocolError(this.deadlineReason)) }, Math.max(0, deadline - Date.now()))
    })
    try {
      const r = await Promise.race([p, late])
      this.pending = undefined
      return r
    } finally {
      clearTimeout(timer)
    }
  }

  /** Make sure `n` bytes are buffered; false when the stream ended first. */
  private async fill (n: number): Promise<boolean> {
    while (this.buf.byteLength < n) {
      if (this.ended) return false
      const r = await this.pull()
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

  /**
   * A varint length-prefixed message; null at a clean end of stream. With `deadlines`, its first byte
   * must arrive within idleMs and the whole message within stallMs of that (else ProtocolError). With a
   * `budget`, the message's length is reserved in it while the message arrives (else ProtocolError).
   */
  async lp (max: number, deadlines?: ReadDeadlines, budget?: ReadBudget): Promise<Uint8Array | null> {
    let reserved = 0
    try {
      if (deadlines?.idleMs != null && this.buf.byteLength === 0) {
        this.deadline = Date.now() + deadlines.idleMs
        this.deadlineReason = `no message for ${deadlines.idleMs} ms`
        this.deadlineBlameless = true
        if (!await this.fill(1)) return null
      }
      this.deadline = deadlines?.stallMs != null ? Date.now() + deadlines.stallMs : undefined
      this.deadlineReason = `message not whole ${deadlines?.stallMs ?? 0} ms after its first byte`
      this.deadlineBlameless = false
      const len = await this.varint()
      if (len == null) return null
      if (len > max) throw new ProtocolError(`message of ${len} bytes exceeds limit ${max}`)
      if (budget != null) {
        if (!budget.take(len)) throw blameless(new ProtocolError(`message of ${len} bytes does not fit the shared read budget`))
        reserved = len
      }
      return await this.exact(len)
    } finally {
      this.deadline = undefined
      if (reserved > 0) budget!.give(reserved)
    }
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

/** What pausingSource needs of a libp2p stream. */
interface PausableStream extends EventTarget {
  readStatus: string
  pause(): void
  resume(): void
}

/**
 * A stream's incoming bytes as an async iterable that pauses the stream while more than `highWater`
 * bytes wait to be read, and resumes it when they are down to half: the muxer then stops granting the
 * sender window, so a sender faster than the reader fills its own buffers, not ours. (A libp2p
 * stream's own iterator queues without bound.)
 */
export function pausingSource (stream: PausableStream, highWater: number): AsyncIterable<Uint8Array | Uint8ArrayList> {
  return {
    [Symbol.asyncIterator] () {
      const queue: Array<Uint8Array | Uint8ArrayList> = []
      let queued = 0
      let ended = stream.readStatus !== 'readable' && stream.readStatus !== 'paused'
      let failure: Error | undefined
      let wake: (() => void) | undefined
      const notify = (): void => { const w = wake; wake = undefined; w?.() }
      const onMessage = (evt: Event): void => {
        const data = (evt as Event & { data: Uint8Array | Uint8ArrayList }).data
        queue.push(data)
        queued += data.byteLength
        if (queued > highWater && stream.readStatus === 'readable') { try { stream.pause() } catch {} }
        notify()
      }
      const onClose = (evt: Event): void => { ended = true; failure ??= (evt as Event & { error?: Error }).error; notify() }
      const onRemoteCloseWrite = (): void => { ended = true; notify() }
      const detach = (): void => {
        stream.removeEventListener('message', onMessage)
        stream.removeEventListener('close', onClose)
        stream.removeEventListener('remoteCloseWrite', onRemoteCloseWrite)
      }
      if (!ended) {
        stream.addEventListener('message', onMessage)
        stream.addEventListener('close', onClose)
        stream.addEventListener('remoteCloseWrite', onRemoteCloseWrite)
      }
      return {
        async next (): Promise<IteratorResult<Uint8Array | Uint8ArrayList>> {
          while (queue.length === 0) {
            if (ended) {
              detach()
              if (failure != null) throw failure
              return { done: true, value: undefined }
            }
            await new Promise<void>(resolve => { wake = resolve })
          }
          const value = queue.shift()!
          queued -= value.byteLength
          if (queued <= highWater / 2 && stream.readStatus === 'paused') { try { stream.resume() } catch {} }
          return { done: false, value }
        },
        async return (): Promise<IteratorResult<Uint8Array | Uint8ArrayList>> {
          ended = true
          detach()
          queue.length = 0
          return { done: true, value: undefined }
        }
      }
    }
  }
}
