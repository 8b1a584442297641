import { describe, it, expect, afterEach } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AbortError, OriginUnreachableError, ReadTimeoutError, RangeNotSatisfiableError } from '@guoce/interface'
import { openStore, type StoredTask, type TaskStore } from '@guoce/store'
import { PieceWaiters, taskReader, type ReadSource, type WaitOptions } from '../src/index.js'

const ID = 'b'.repeat(64)
const PIECE = 64 * 1024
const sha = (b: Uint8Array): Uint8Array => createHash('sha256').update(b).digest()

/** A download driven by hand: the same waits a PeerTask keeps, over a real store. */
class HandSource implements ReadSource {
  readonly waiters = new PieceWaiters('hand task')
  stored: StoredTask | undefined
  failed: Error | undefined
  readonly done = Promise.withResolvers<void>()
  digest: string | undefined
  isLazy = false
  constructor (private readonly store: TaskStore, readonly content: Buffer) { this.done.promise.catch(() => {}) }
  get finished (): Promise<void> { return this.done.promise }
  async layout (): Promise<void> {
    const n = Math.ceil(this.content.length / PIECE)
    this.stored = await this.store.create(ID, { taskId: ID, contentLength: this.content.length, pieceLength: PIECE, pieceCount: n })
    this.waiters.layoutKnown()
  }

  async deliver (n: number): Promise<void> {
    const data = this.content.subarray(n * PIECE, Math.min(this.content.length, (n + 1) * PIECE))
    await this.stored!.writePiece(n, data, sha(data))
    this.waiters.arrived(n)
    // a lazy task completes only when a whole download joins it: never here
    if (this.stored!.complete && !this.isLazy) this.done.resolve()
  }

  fail (err: Error): void { this.failed = err; this.waiters.failAll(err); this.done.reject(err) }
  async whenLayout (o: WaitOptions): Promise<StoredTask> {
    for (;;) {
      if (this.failed != null) throw this.failed
      if (this.stored != null) return this.stored
      await this.waiters.layout(o)
    }
  }

  async whenPiece (n: number, o: WaitOptions): Promise<StoredTask> {
    for (;;) {
      if (this.failed != null) throw this.failed
      if (this.stored?.bitmap.has(n) === true) return this.stored
      if (this.stored == null) await this.waiters.layout(o)
      else await this.waiters.piece(n, o)
    }
  }
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c() })

async function setup (size = 10 * PIECE + 123): Promise<{ src: HandSource, content: Buffer, reader: ReturnType<typeof taskReader> }> {
  const dir = await mkdtemp(join(tmpdir(), 'guoce-reader-'))
  const store = await openStore({ dir })
  cleanups.push(async () => { await store.close(); await rm(dir, { recursive: true, force: true }) })
  const content = randomBytes(size)
  const src = new HandSource(store, content)
  return { src, content, reader: taskReader({ resolve: async () => src, timeoutMs: 5_000 }) }
}

/** the error `p` rejects with (a resolve fails the test) */
async function fails (p: Promise<unknown>): Promise<Error> {
  return await p.then(() => { throw new Error('expected a rejection') }, (e: unknown) => e as Error)
}

/** resolve on the next turns of the event loop (after pending I/O) */
const settle = async (): Promise<void> => { for (let i = 0; i < 5; i++) await new Promise(resolve => setImmediate(resolve)) }

describe('reader', () => {
  it('a ranged read waits for the layout and exactly its pieces, and returns their verified bytes', async () => {
    const { src, content, reader } = await setup()
    let done = false
    const read = reader.read({ taskId: ID, offset: 3 * PIECE - 10, length: 20 }).then(b => { done = true; return b })
    await src.layout()
    await settle()
    // pieces 2 and 3 are what it waits for, at on-demand priority (0)
    expect([...src.waiters.wanted()]).toEqual([[2, 0], [3, 0]])
    await src.deliver(2)
    await src.deliver(5)
    await settle()
    expect(done).toBe(false)
    await src.deliver(3)
    expect(Buffer.from(await read).equals(content.subarray(3 * PIECE - 10, 3 * PIECE + 10))).toBe(true)
    expect(src.waiters.size).toBe(0)
    // clipped at the content's end
    await src.deliver(10)
    expect(Buffer.from(await reader.read({ taskId: ID, offset: content.length - 5, length: 100 })).equals(content.subarray(content.length - 5))).toBe(true)
  }, 10_000)

  it('a stream yields bytes in order as their pieces arrive, waiting on the next few pieces ahead', async () => {
    const { src, content, reader } = await setup()
    await src.layout()
    const got: Buffer[] = []
    const it = reader.stream({ taskId: ID, offset: PIECE + 7, priority: 'prefetch' })[Symbol.asyncIterator]()
    const first = it.next()
    await settle()
    // the piece it reads and STREAM_READAHEAD_PIECES more, at prefetch priority (1)
    expect([...src.waiters.wanted()].sort((a, b) => a[0] - b[0])).toEqual([[1, 1], [2, 1], [3, 1], [4, 1], [5, 1]])
    await src.deliver(1)
    const r = await first
    got.push(Buffer.from(r.value!))
    expect(got[0]!.equals(content.subarray(PIECE + 7, 2 * PIECE))).toBe(true)
    // the rest arrive out of order; the stream stays in order
    const rest = (async () => { for (let x = await it.next(); x.done !== true; x = await it.next()) got.push(Buffer.from(x.value)) })()
    for (const n of [3, 2, 0, 9, 8, 7, 6, 5, 4, 10]) await src.deliver(n)
    await rest
    expect(Buffer.concat(got).equals(content.subarray(PIECE + 7))).toBe(true)
    expect(src.waiters.size).toBe(0)
  })

  it('a whileProgressing read waits past its timeout while the task receives other pieces, and fails once it receives none', async () => {
    const { src, content, reader } = await setup()
    await src.layout()
    const t0 = Date.now()
    let failed: Error | undefined
    const read = reader.read({ taskId: ID, offset: 9 * PIECE, length: 10, timeoutMs: 300, whileProgressing: true }).catch((err: Error) => { failed = err; return null })
    // other pieces arrive every 100 ms for 900 ms: three times the timeout, and the read still waits
    for (let n = 0; n < 9; n++) { await new Promise(resolve => setTimeout(resolve, 100)); await src.deliver(n) }
    expect(failed).toBeUndefined()
    await src.deliver(9)
    expect(Buffer.from((await read)!).equals(content.subarray(9 * PIECE, 9 * PIECE + 10))).toBe(true)
    expect(Date.now() - t0).toBeGreaterThan(800)
    // nothing arrives any more: it fails within its timeout of the last piece
    const t1 = Date.now()
    const err = await fails(reader.read({ taskId: ID, offset: 10 * PIECE, length: 10, timeoutMs: 300, whileProgressing: true }))
    expect(err.name).toBe(ReadTimeoutError.name)
    expect(err.message).toMatch(/while the task received nothing for 300 ms/)
    expect(Date.now() - t1).toBeLessThan(2_000)
    expect(src.waiters.size).toBe(0)
  })

  it('a read whose piece does not arrive fails with ReadTimeoutError after its timeout, and stops waiting', async () => {
    const { src, reader } = await setup()
    await src.layout()
    const t0 = Date.now()
    const err = await fails(reader.read({ taskId: ID, offset: 0, length: 2 * PIECE, timeoutMs: 300 }))
    expect(err.name).toBe(ReadTimeoutError.name)
    expect(err.message).toMatch(/waited 300 ms for piece \d of hand task/)
    expect(Date.now() - t0).toBeLessThan(2_000)
    expect(src.waiters.size).toBe(0)
    // no layout in time either
    const { reader: r2 } = await setup()
    expect((await fails(r2.stat({ taskId: ID, timeoutMs: 200 }))).message).toMatch(/layout/)
  })

  it('an aborted read or stream stops waiting at once (AbortError), and its read-ahead too', async () => {
    const { src, reader } = await setup()
    await src.layout()
    const ac = new AbortController()
    const read = fails(reader.read({ taskId: ID, offset: 0, length: 3 * PIECE, signal: ac.signal }))
    const ac2 = new AbortController()
    const stream = fails((async () => { for await (const _ of reader.stream({ taskId: ID, signal: ac2.signal })) { /* nothing arrives */ } })())
    await settle()
    expect(src.waiters.size).toBe(3 + 5)
    ac.abort(); ac2.abort()
    expect((await read).name).toBe(AbortError.name)
    expect((await stream).name).toBe(AbortError.name)
    expect(src.waiters.size).toBe(0)
    // a consumer that stops early (break) leaves no wait behind either
    await src.deliver(0)
    for await (const _ of reader.stream({ taskId: ID })) break
    await settle()
    expect(src.waiters.size).toBe(0)
  })

  it('reads fail with the task\'s own error when it fails, now and later', async () => {
    const { src, reader } = await setup()
    await src.layout()
    const read = fails(reader.read({ taskId: ID, offset: 0, length: 10 }))
    await settle()
    src.fail(new OriginUnreachableError('origin refused the connection'))
    expect((await read).name).toBe(OriginUnreachableError.name)
    expect((await fails(reader.read({ taskId: ID, offset: 0, length: 10 }))).name).toBe(OriginUnreachableError.name)
  })

  it('a stream of a digest-named task gives its last bytes only once the task succeeded', async () => {
    const { src, content, reader } = await setup(3 * PIECE)
    src.digest = 'sha256:' + 'c'.repeat(64)
    await src.layout()
    for (const n of [0, 1]) await src.deliver(n)
    const got: Buffer[] = []
    const it = reader.stream({ taskId: ID, offset: 2 * PIECE - 5 })[Symbol.asyncIterator]()
    got.push(Buffer.from((await it.next()).value!))
    const last = it.next()
    let yielded = false
    void last.then(() => { yielded = true })
    // the last piece is held: the stream still waits for the task's end (here a hand-driven success)
    const data = content.subarray(2 * PIECE)
    await src.stored!.writePiece(2, data, sha(data))
    src.waiters.arrived(2)
    await settle()
    expect(yielded).toBe(false)
    src.done.resolve()
    got.push(Buffer.from((await last).value!))
    expect((await it.next()).done).toBe(true)
    expect(Buffer.concat(got).equals(content.subarray(2 * PIECE - 5))).toBe(true)
  })

  it('a lazy digest-named task: a whole stream is checked as it goes out and ends without the task completing; a later offset relies on piece digests', async () => {
    const { src, content, reader } = await setup(3 * PIECE + 77)
    src.digest = 'sha256:' + createHash('sha256').update(content).digest('hex')
    src.isLazy = true
    await src.layout()
    for (const n of [0, 1, 2, 3]) await src.deliver(n)
    const whole: Buffer[] = []
    for await (const c of reader.stream({ taskId: ID })) whole.push(Buffer.from(c))
    expect(Buffer.concat(whole).equals(content)).toBe(true)
    const tail: Buffer[] = []
    for await (const c of reader.stream({ taskId: ID, offset: PIECE + 9 })) tail.push(Buffer.from(c))
    expect(Buffer.concat(tail).equals(content.subarray(PIECE + 9))).toBe(true)
  })

  it('a whole stream of content that does not match its digest fails before its last bytes', async () => {
    const { src, content, reader } = await setup(3 * PIECE + 77)
    src.digest = 'sha256:' + 'd'.repeat(64)
    src.isLazy = true
    await src.layout()
    for (const n of [0, 1, 2, 3]) await src.deliver(n)
    const got: Buffer[] = []
    const err = await (async () => {
      try { for await (const c of reader.stream({ taskId: ID })) got.push(Buffer.from(c)) } catch (e) { return e as Error }
    })()
    expect(err?.name).toBe('DigestMismatchError')
    const yielded = Buffer.concat(got)
    expect(yielded.length).toBeLessThan(content.length)
    expect(yielded.equals(content.subarray(0, yielded.length))).toBe(true)
  })

  it('checks its arguments: offsets beyond the content, negative or fractional numbers', async () => {
    const { src, content, reader } = await setup(PIECE)
    await src.layout()
    expect((await fails(reader.read({ taskId: ID, offset: content.length + 1, length: 1 }))).name).toBe(RangeNotSatisfiableError.name)
    expect((await fails(reader.read({ taskId: ID, offset: -1, length: 1 }))).name).toBe('InvalidParametersError')
    expect((await fails(reader.read({ taskId: ID, offset: 0.5, length: 1 }))).name).toBe('InvalidParametersError')
    expect((await reader.read({ taskId: ID, offset: content.length, length: 10 })).byteLength).toBe(0)
  })
})

describe('PieceWaiters.due: what is asked of the seed', () => {
  it('a read waiting impatiently is due at once; one following a download (whileProgressing) only after the patience', async () => {
    const w = new PieceWaiters('due test')
    const ac = new AbortController()
    const t0 = Date.now()
    const reads = [
      w.piece(1, { priority: 0, timeoutMs: 60_000, signal: ac.signal }),
      w.piece(2, { priority: 0, timeoutMs: 60_000, signal: ac.signal, whileProgressing: true }),
      // a piece both kinds wait for is due at once
      w.piece(3, { priority: 1, timeoutMs: 60_000, signal: ac.signal, whileProgressing: true }),
      w.piece(3, { priority: 0, timeoutMs: 60_000, signal: ac.signal })
    ].map(async p => await p.catch(() => {}))
    let r = w.due(t0, 500)
    expect([...r.due.keys()].sort()).toEqual([1, 3])
    expect(r.due.get(3)).toBe(0)
    expect(r.wakeAt).toBeGreaterThanOrEqual(t0 + 500)
    expect(r.wakeAt).toBeLessThanOrEqual(Date.now() + 500)
    r = w.due(r.wakeAt!, 500)
    expect([...r.due.keys()].sort()).toEqual([1, 2, 3])
    expect(r.wakeAt).toBeUndefined()
    ac.abort()
    await Promise.all(reads)
  })
})
