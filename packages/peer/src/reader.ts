/*
 * The reader (TaskReader in @guoce/interface): ranged reads and ordered streams of a task, complete or
 * still downloading. Ownership: the reader owns nothing long-lived; each read owns its waits (timers,
 * abort listeners, held in the task's PieceWaiters) and drops them when it settles or its consumer
 * stops. The ReadSource (a PeerTask, or a whole task in the store) owns the bytes and says when a
 * piece is held. Every byte read comes from a piece that was verified before it was stored.
 *
 * A stream of a task named by a digest never yields the content's last bytes before the whole content
 * matched the digest, so a consumer that reads it to the end never gets a complete answer for content
 * that does not match: the stream waits for the task's own whole-content check before its last chunk, except
 * on a lazy (ranged) task, which never completes: there a stream from offset 0 hashes what it yields and
 * compares before the last chunk (DigestMismatchError instead of it), and a stream from a later offset
 * relies, as every ranged read does, on the piece digests.
 */
import { createHash } from 'node:crypto'
import { AbortError, DigestMismatchError, InvalidParametersError, NotFoundError, RangeNotSatisfiableError, type RangeRead, type ReadOptions, type ReadPriority, type ReadTarget, type StreamRead, type TaskInfo, type TaskReader } from '@guoce/interface'
import type { StoredTask, TaskStore } from '@guoce/store'
import { Priority } from '@guoce/transfer'
import type { WaitOptions } from './piece-waiters.js'
import { MAX_READ_BYTES, READ_TIMEOUT_MS, STREAM_CHUNK_BYTES, STREAM_READAHEAD_PIECES } from './constants.js'

/** What a read needs of a task: a PeerTask is one; so is a whole task in the store. */
export interface ReadSource {
  /** `sha256:<hex>` of the whole content, when the task is named by it */
  readonly digest?: string | undefined
  whenLayout(o: WaitOptions): Promise<StoredTask>
  whenPiece(n: number, o: WaitOptions): Promise<StoredTask>
  /** settles when the task succeeded (resolves) or failed (rejects) */
  readonly finished: Promise<void>
  /** a ranged task that fetches only what is read (it completes only if a whole download joins it) */
  readonly isLazy?: boolean
}

export interface ReaderInit {
  /** the source of a target: start or join a download for a request; the running task or the stored whole task for an id */
  resolve: (target: ReadTarget) => Promise<ReadSource>
  /** @default READ_TIMEOUT_MS */
  timeoutMs?: number
  /** a read got its bytes (a stream: its first chunk) after `seconds` */
  onRead?: (priority: ReadPriority, seconds: number) => void
}

const WIRE: Record<ReadPriority, number> = { 'on-demand': Priority.ON_DEMAND, prefetch: Priority.PREFETCH, background: Priority.BACKGROUND }

/** A whole task in the store with no download running: every piece is held. */
export function storedSource (s: StoredTask): ReadSource {
  return {
    whenLayout: async () => s,
    whenPiece: async (n) => {
      if (!s.bitmap.has(n)) throw new NotFoundError(`piece ${n} of task ${s.taskId.slice(0, 12)} is not held and no download of it runs`)
      return s
    },
    finished: Promise.resolve()
  }
}

/** The reader over a daemon's tasks and store: `resolve` finds the source of a target. */
export function taskReader (init: ReaderInit): TaskReader {
  return new Reader(init)
}

/** `resolve` for a daemon: requests start or join a download; ids are the running task or a whole stored one. */
export function daemonResolver (d: { tasks: ReadonlyMap<string, ReadSource>, store: TaskStore, download: (req: NonNullable<ReadTarget['request']>) => Promise<ReadSource> }): (t: ReadTarget) => Promise<ReadSource> {
  return async (t) => {
    if (t.request != null) return await d.download(t.request)
    const running = d.tasks.get(t.taskId)
    if (running != null) return running
    const s = await d.store.get(t.taskId).catch(() => null)
    if (s?.complete === true) return storedSource(s)
    throw new NotFoundError(`no task ${t.taskId} is running or held whole here`)
  }
}

/** `p`, or AbortError as soon as `signal` aborts. */
async function untilAborted<T> (p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) throw new AbortError('read aborted')
  let onAbort: (() => void) | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => {
      onAbort = () => { reject(new AbortError('read aborted')) }
      signal.addEventListener('abort', onAbort, { once: true })
    })])
  } finally {
    if (onAbort != null) signal.removeEventListener('abort', onAbort)
  }
}

function checkInt (v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidParametersError(`${what} must be a non-negative integer, got ${v}`)
}

class Reader implements TaskReader {
  private readonly timeoutMs: number
  constructor (private readonly init: ReaderInit) {
    this.timeoutMs = init.timeoutMs ?? READ_TIMEOUT_MS
  }

  private wait (o: ReadOptions, signal?: AbortSignal): WaitOptions {
    return { priority: WIRE[o.priority ?? 'on-demand'], timeoutMs: o.timeoutMs ?? this.timeoutMs, signal: signal ?? o.signal, whileProgressing: o.whileProgressing }
  }

  async stat (t: ReadTarget & ReadOptions): Promise<TaskInfo> {
    const src = await this.init.resolve(t)
    return (await src.whenLayout(this.wait(t))).info
  }

  async read (r: RangeRead): Promise<Uint8Array> {
    const t0 = performance.now()
    const b = await this.readRange(r)
    this.init.onRead?.(r.priority ?? 'on-demand', (performance.now() - t0) / 1000)
    return b
  }

  private async readRange (r: RangeRead): Promise<Uint8Array> {
    checkInt(r.offset, 'offset'); checkInt(r.length, 'length')
    if (r.length > MAX_READ_BYTES) throw new InvalidParametersError(`a read of ${r.length} bytes is above MAX_READ_BYTES (${MAX_READ_BYTES}): stream it`)
    const src = await this.init.resolve(r)
    const s = await src.whenLayout(this.wait(r))
    const { contentLength: size, pieceLength } = s.info
    if (r.offset > size) throw new RangeNotSatisfiableError(`offset ${r.offset} is beyond the content's ${size} bytes`)
    const end = Math.min(size, r.offset + r.length)
    if (end === r.offset) return new Uint8Array(0)
    // every piece of the range at once; the first failure stops the other waits
    const ac = new AbortController()
    const signal = r.signal != null ? AbortSignal.any([r.signal, ac.signal]) : ac.signal
    const o = this.wait(r, signal)
    const waits: Array<Promise<StoredTask>> = []
    for (let n = Math.floor(r.offset / pieceLength); n * pieceLength < end; n++) waits.push(src.whenPiece(n, o))
    let held: StoredTask
    try {
      held = (await Promise.all(waits))[0]!
    } catch (err) {
      ac.abort()
      await Promise.allSettled(waits)
      throw err
    }
    const buf = await held.read(r.offset, end - r.offset)
    if (buf.byteLength !== end - r.offset) throw new NotFoundError(`task ${held.taskId.slice(0, 12)} is short on disk`)
    return buf
  }

  async * stream (r: StreamRead): AsyncGenerator<Uint8Array> {
    const t0 = performance.now()
    let first = true
    for await (const chunk of this.streamRange(r)) {
      if (first) { first = false; this.init.onRead?.(r.priority ?? 'on-demand', (performance.now() - t0) / 1000) }
      yield chunk
    }
  }

  private async * streamRange (r: StreamRead): AsyncGenerator<Uint8Array> {
    const offset = r.offset ?? 0
    checkInt(offset, 'offset')
    if (r.end != null) checkInt(r.end, 'end')
    const src = await this.init.resolve(r)
    const s0 = await src.whenLayout(this.wait(r))
    const { contentLength: size, pieceLength } = s0.info
    if (offset > size) throw new RangeNotSatisfiableError(`offset ${offset} is beyond the content's ${size} bytes`)
    const end = Math.min(size, r.end ?? size)
    if (end <= offset) return
    const ac = new AbortController()
    const signal = r.signal != null ? AbortSignal.any([r.signal, ac.signal]) : ac.signal
    const o = this.wait(r, signal)
    const last = Math.floor((end - 1) / pieceLength)
    // the whole content of a digest-named task: checked here as it goes out (see the file's head)
    // (only for a lazy task: any other task checks its whole content itself, and the stream waits for that)
    const whole = src.digest != null && src.isLazy === true && offset === 0 && end === size ? createHash('sha256') : undefined
    // the piece being read and the next few are waited for (so requested) together
    const ahead = new Map<number, Promise<StoredTask>>()
    let next = Math.floor(offset / pieceLength)
    const fill = (upTo: number): void => {
      for (; next <= Math.min(last, upTo); next++) {
        const p = src.whenPiece(next, o)
        p.catch(() => {})
        ahead.set(next, p)
      }
    }
    try {
      let pos = offset
      for (let n = Math.floor(offset / pieceLength); n <= last; n++) {
        fill(n + STREAM_READAHEAD_PIECES)
        const s = await ahead.get(n)!
        ahead.delete(n)
        const pieceEnd = Math.min(end, (n + 1) * pieceLength)
        while (pos < pieceEnd) {
          const len = Math.min(STREAM_CHUNK_BYTES, pieceEnd - pos)
          const chunk = await s.read(pos, len)
          if (chunk.byteLength !== len) throw new NotFoundError(`task ${s.taskId.slice(0, 12)} is short on disk`)
          pos += len
          whole?.update(chunk)
          // digest-named content: its last bytes only after the whole content matched
          if (pos === size && src.digest != null) {
            if (whole != null) {
              const got = 'sha256:' + whole.digest('hex')
              if (got !== src.digest) throw new DigestMismatchError(`task ${s.taskId.slice(0, 12)}: content is ${got}, expected ${src.digest}`)
            } else if (src.isLazy !== true) {
              await untilAborted(src.finished, signal)
            }
          }
          yield chunk
        }
      }
    } finally {
      // the consumer stopped, or the stream failed or ended: no read-ahead keeps waiting
      ac.abort()
      await Promise.allSettled(ahead.values())
    }
  }
}
