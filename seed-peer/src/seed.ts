/*
 * The seed peer service: a host of type "seed". When the scheduler orders it to seed a task it
 * fetches the origin once, splits it into pieces, hashes each, stores it and announces number +
 * digest as it goes, so children download while the origin transfer still runs.
 * Ownership: `running` maps task id -> the one origin fetch in flight (single-flight); at most
 * SEED_CONCURRENT_FETCHES run, SEED_QUEUED_ORDERS more wait in `queued`, later orders are dropped
 * (warned; the task's peers then go to the origin themselves).
 */
import type { Libp2p } from 'libp2p'
import { createHash } from 'node:crypto'
import { DigestMismatchError, toErrorInfo, type Logger, type Startable } from '@guoce/interface'
import type { TaskStore, StoredTask } from '@guoce/store'
import { credentialHash, taskIdFrom, redactUrl } from '@guoce/content'
import { SchedulerClient, servePieces, dataChannelFor, hostInfo, ANNOUNCE_BATCH, type PeerMessage, type PieceChannel, type PieceServer, type SchedulerMessage } from '@guoce/transfer'
import { fillFromSource, fetchRun, openLazy, serveStore, registerRef, announceHeld, type SourceFillInit, type HostInit } from '@guoce/host'

/**
 * Origin fetches a seed runs at once, and seed orders it keeps waiting beyond them.
 * @default 32, 1024
 */
export const SEED_CONCURRENT_FETCHES = 32
export const SEED_QUEUED_ORDERS = 1024
/**
 * Tasks a seed holds open for lazy (piece by piece) fetching at once; orders beyond are seeded whole.
 * @default 4096
 */
export const SEED_LAZY_TASKS = 4096
/**
 * Pieces one Range request of the seed's fill covers. A wanted piece goes out at once beside the run in
 * flight, unless that run holds it: then it waits for the run, so runs are short (a longer one let a
 * read ahead of the fill wait for up to a whole run: 32 pieces took 2.7 s at 12 MiB/s).
 * @default 2
 */
export const LAZY_FILL_RUN = 2
/**
 * Fill runs of one task in flight at once. One at a time, every run paid a request's round trip with
 * the link idle, and a seed whose uplink is busy serving children (its ACKs and requests queue behind
 * piece uploads) fetched six layers from a 100 Mbit/s registry at 5 MB/s (bench/mirror).
 * @default 4
 */
export const SEED_FILL_RUNS = 4
/**
 * After a wanted piece (a ranged read waits for it) went out, and at the start of a fill, the fill runs one
 * run at a time for this long: a read's pieces then share the origin link with one fill run, not with
 * SEED_FILL_RUNS (test/read-during-download.spec.ts).
 * @default 2000 ms
 */
export const SEED_FILL_QUIET_MS = 2_000
/**
 * Upload slots a seed announces: children with their backups over all tasks (a daemon's UPLOAD_SLOTS
 * doubled; the scheduler gives a seed SEED_CHILD_LIMIT primary children per task besides).
 * @default 48
 */
export const SEED_UPLOAD_SLOTS = 48
/**
 * Longest a child's `fetch` request for a piece of a task this seed fetches waits for it (PieceProvider.whenHeld);
 * then it is refused as not held, and the child asks again or elsewhere (within the child's own request timeout,
 * PIECE_TIMEOUT_MS, so a slow origin does not cost the child its seed).
 * @default 5 s
 */
export const SEED_HOLD_WAIT_MS = 5_000

/** A task the seed fetches piece by piece: wanted pieces first, then (once upgraded) the rest. */
interface LazyTask {
  wanted: Set<number>
  whole: boolean
  /** something changed (a want, an upgrade, a run ended) since the loop last looked */
  dirty: boolean
  wake: (() => void) | undefined
}

/** The piece length an order's task names (part of its id, so part of every register and of the stored meta). */
function namedLength (order: { pieceLength?: number }): { pieceLength?: number } {
  return order.pieceLength != null && order.pieceLength !== 0 ? { pieceLength: order.pieceLength } : {}
}

function poke (t: LazyTask): void {
  t.dirty = true
  const w = t.wake; t.wake = undefined; w?.()
}

async function changed (t: LazyTask): Promise<void> {
  if (!t.dirty) await new Promise<void>(resolve => { t.wake = resolve })
  t.dirty = false
}

export interface SeedPeerInit extends HostInit {
  /**
   * The scheduler's seed key (`guoce seed --seed-key`): hello carries a proof under it, which makes this
   * host a designated seed. Without it the scheduler treats the host as a normal one (no seed orders).
   */
  seedKey?: Uint8Array
}

export interface SeedStats { originBytes: number, uploadBytes: number, tasks: number }

export class SeedPeer implements Startable {
  private readonly client: SchedulerClient
  private readonly running = new Map<string, Promise<void>>()
  private readonly lazy = new Map<string, LazyTask>()
  private readonly queued = new Map<string, NonNullable<SchedulerMessage['seed']>>()
  private readonly log: Logger
  private pieceServer: PieceServer | undefined
  readonly stats: SeedStats = { originBytes: 0, uploadBytes: 0, tasks: 0 }

  constructor (private readonly init: SeedPeerInit) {
    this.log = init.log.child({ component: 'seed-peer' })
    this.client = new SchedulerClient({
      node: init.node,
      scheduler: init.scheduler,
      log: init.log,
      host: () => hostInfo(init.node, { type: 'seed', uploadSlots: init.uploadSlots ?? SEED_UPLOAD_SLOTS, idc: init.idc, location: init.location }),
      ...(init.seedKey != null ? { seedKey: init.seedKey } : {}),
      onMessage: (m) => { this.onMessage(m) },
      onConnect: async () => { await this.announceAll() }
    })
  }

  /** children's `fetch` requests waiting for a piece: task id -> piece -> settle */
  private readonly holds = new Map<string, Map<number, Array<(held: boolean) => void>>>()

  /**
   * A piece of a task this seed fetches (lazily or whole), asked for by a child with `fetch`: wanted at once,
   * like a want the scheduler relays, and answered once announced (SEED_HOLD_WAIT_MS at most). Not for
   * tasks this seed is not fetching (undefined: refused as not held).
   */
  private whenHeld (taskId: string, n: number): Promise<boolean> | undefined {
    const lazy = this.lazy.get(taskId)
    if (lazy == null || !Number.isSafeInteger(n) || n < 0) return undefined
    let task = this.holds.get(taskId)
    if (task == null) this.holds.set(taskId, task = new Map())
    let waiting = task.get(n)
    if (waiting == null) task.set(n, waiting = [])
    if (waiting.length >= SEED_QUEUED_ORDERS) return undefined
    const { promise, resolve } = Promise.withResolvers<boolean>()
    const settle = (held: boolean): void => { clearTimeout(timer); resolve(held) }
    // given up: this request leaves the table (a piece that never comes holds no memory for it)
    const timer = setTimeout(() => { this.unhold(taskId, n, settle); settle(false) }, SEED_HOLD_WAIT_MS)
    timer.unref()
    waiting.push(settle)
    lazy.wanted.add(n)
    poke(lazy)
    // held already (a fetch that ended before this call): answered now
    // (a complete task's last piece may wait for the whole-content check: seedLazy's end answers it)
    // a number outside the layout is refused at once
    void this.init.store.get(taskId).then(t => {
      if (t != null && n >= t.info.pieceCount) this.held(taskId, [n], false)
      else if (t?.bitmap.has(n) === true && !t.complete) this.held(taskId, [n], true)
    }, () => {})
    return promise
  }

  private unhold (taskId: string, n: number, settle: (held: boolean) => void): void {
    const task = this.holds.get(taskId)
    const waiting = task?.get(n)
    if (task == null || waiting == null) return
    const i = waiting.indexOf(settle)
    if (i >= 0) waiting.splice(i, 1)
    if (waiting.length === 0) task.delete(n)
    if (task.size === 0) this.holds.delete(taskId)
  }

  /** pieces announced (true) or a task given up (false, every piece): the fetch requests waiting for them are answered */
  private held (taskId: string, numbers: number[] | undefined, held: boolean): void {
    const task = this.holds.get(taskId)
    if (task == null) return
    for (const n of numbers ?? [...task.keys()]) {
      for (const settle of task.get(n) ?? []) settle(held)
      task.delete(n)
    }
    if (task.size === 0) this.holds.delete(taskId)
  }

  async start (): Promise<void> {
    this.pieceServer = await serveStore(this.init, bytes => { this.stats.uploadBytes += bytes }, (taskId, n) => this.whenHeld(taskId, n))
    await this.client.start()
  }

  async stop (): Promise<void> {
    await this.client.stop()
    await this.pieceServer?.close()
  }

  get ready (): Promise<void> { return this.client.ready }

  /** After (re)connecting: re-register every held task with its layout and digests. */
  private async announceAll (): Promise<void> {
    for (const id of await this.init.store.list()) {
      const t = await this.init.store.get(id).catch(() => null)
      if (t == null) continue
      this.announce(t)
    }
  }

  private announce (t: StoredTask): void {
    const ref = registerRef(t)
    if (ref == null) { this.log.warn('stored task under an id its reference does not give; not announced', { task: t.taskId.slice(0, 12) }); return }
    this.client.send({ register: { taskId: t.taskId, ...ref, bitmap: t.bitmap.bytes, completed: t.complete } })
    announceHeld(m => this.client.send(m), t)
  }

  private onMessage (msg: SchedulerMessage): void {
    if (msg.seed == null) return
    const order = msg.seed
    const lazy = this.lazy.get(order.taskId)
    if (lazy != null) {
      for (const n of order.numbers ?? []) lazy.wanted.add(n)
      if (order.lazy !== true) lazy.whole = true
      poke(lazy)
      return
    }
    if (this.running.has(order.taskId) || this.queued.has(order.taskId)) return
    const pinned = (order.version != null && order.version !== '') || (order.digest != null && order.digest !== '')
    if (order.lazy === true && pinned && this.lazy.size < SEED_LAZY_TASKS) {
      const t: LazyTask = { wanted: new Set(order.numbers ?? []), whole: false, dirty: true, wake: undefined }
      this.lazy.set(order.taskId, t)
      void this.seedLazy(order, t).finally(() => { this.lazy.delete(order.taskId) })
      return
    }
    if (this.running.size >= SEED_CONCURRENT_FETCHES) {
      if (this.queued.size >= SEED_QUEUED_ORDERS) { this.log.warn('seed order dropped: queue full', { task: order.taskId.slice(0, 12) }); return }
      this.queued.set(order.taskId, order)
      return
    }
    this.run(order)
  }

  private run (order: NonNullable<SchedulerMessage['seed']>): void {
    const p = this.seed(order).finally(() => {
      this.running.delete(order.taskId)
      const next = this.queued.values().next()
      if (next.done !== true) { this.queued.delete(next.value.taskId); this.run(next.value) }
    })
    this.running.set(order.taskId, p)
  }

  /**
   * Seed a task lazily (ranged reads): learn its layout with a one-byte request, then fetch wanted
   * pieces at once, each run of adjacent ones with its own Range request, announcing digests as they
   * come. A whole order (a full download joined) fills the rest in runs of LAZY_FILL_RUN beside them.
   */
  private async seedLazy (order: NonNullable<SchedulerMessage['seed']>, lazy: LazyTask): Promise<void> {
    const { taskId } = order
    const ref = { url: order.url, headers: order.headers ?? {}, ...(order.digest != null && order.digest !== '' ? { digest: order.digest } : {}), ...(order.tag != null && order.tag !== '' ? { tag: order.tag } : {}), ...(order.version != null && order.version !== '' ? { version: order.version } : {}) }
    const credentials = credentialHash(ref)
    const named = namedLength(order)
    this.log.info(lazy.whole ? 'seeding' : 'seeding lazily', { task: taskId.slice(0, 12), url: order.url })
    this.stats.tasks++
    this.client.send({ register: { taskId, ...ref, ...(credentials != null ? { credentials } : {}), ...named, ...(lazy.whole ? {} : { lazy: true }) } })
    const fill: SourceFillInit = {
      store: this.init.store,
      taskId,
      ref,
      meta: { ...ref, ...(credentials != null ? { credentials } : {}), ...named },
      timeoutMs: this.init.originTimeoutMs,
      onInfo: (info, task) => { filling = task; this.client.send({ sourceInfo: { taskId, info } }) },
      onPiece: (n, digest) => {
        // content named by a digest: the piece that completes it is announced only once the whole
        // content matched, so no peer can finish (and fail) the task before the seed's verdict, which
        // then reaches everyone as the task's failure (a peer retrying at once gets a fresh fetch)
        if (ref.digest != null && filling?.complete === true) { last = { n, digest }; return }
        this.client.send({ pieceDone: { taskId, numbers: [n], digests: [digest] } })
        this.held(taskId, [n], true)
      },
      onBytes: (n) => { this.stats.originBytes += n }
    }
    let filling: StoredTask | undefined
    let last: { n: number, digest: Uint8Array } | undefined
    let failure: Error | undefined
    try {
      let task = await this.init.store.get(taskId).catch(() => null)
      if (task != null) { filling = task; this.announce(task) }
      else task = await openLazy(fill, { firstPiece: lazy.whole }) ?? null
      // empty content (416 to a range): fetched whole, which takes an empty body
      if (task == null) task = await fillFromSource(fill)
      const t = task
      const { pieceCount } = t.info
      /** pieces a request in flight covers */
      const fetching = new Set<number>()
      const run = async (n: number, end: number): Promise<void> => {
        for (let i = n; i < end; i++) fetching.add(i)
        try {
          await fetchRun(fill, t, n, end)
        } catch (err) {
          if ((err as Error).name === 'ContentChangedError') failure ??= err as Error
          // the readers waiting for these pieces time out on their own; a later want asks again
          else this.log.warn('lazy fetch failed', { task: taskId.slice(0, 12), pieces: `${n}-${end - 1}`, err: (err as Error).message })
          throw err
        } finally {
          for (let i = n; i < end; i++) fetching.delete(i)
        }
      }
      const free = (i: number): boolean => !t.bitmap.has(i) && !fetching.has(i)
      /** Range requests for wanted pieces in flight: the fill starts no new run meanwhile (they get the link) */
      let wantRuns = 0
      /**
       * when a wanted piece last went out (at first: when the fill began, as readers often start with the
       * download): the fill keeps to one run at a time for SEED_FILL_QUIET_MS after
       */
      let wantedAt = Date.now()
      /** wanted pieces now, adjacent ones in one request, beside whatever else runs */
      const serveWanted = (): void => {
        const wanted = [...lazy.wanted].filter(i => i < pieceCount && free(i)).sort((a, b) => a - b)
        lazy.wanted.clear()
        if (wanted.length > 0) wantedAt = Date.now()
        for (let i = 0; i < wanted.length;) {
          let j = i + 1
          while (j < wanted.length && wanted[j] === wanted[j - 1]! + 1 && j - i < LAZY_FILL_RUN) j++
          wantRuns++
          void run(wanted[i]!, wanted[j - 1]! + 1).catch(() => {}).finally(() => { wantRuns--; poke(lazy) })
          i = j
        }
      }
      let next = 0
      /** fill runs in flight (up to SEED_FILL_RUNS: the next requests go out while one transfers) */
      let fills = 0
      while (!t.complete && failure == null) {
        serveWanted()
        if (lazy.whole && wantRuns > 0) { await changed(lazy); continue }
        if (lazy.whole) {
          while (next < pieceCount && !free(next)) next++
          // readers waiting for pieces lately: one fill run at a time, so their next pieces share the link
          // with one run only
          const limit = Date.now() - wantedAt < SEED_FILL_QUIET_MS ? 1 : SEED_FILL_RUNS
          if (next < pieceCount && fills < limit) {
            let end = next
            while (end < pieceCount && end - next < LAZY_FILL_RUN && free(end)) end++
            // wanted pieces keep going out while fill runs are in flight; a failed run holds its place
            // for a second (the origin may be struggling), and its pieces are taken up again below
            fills++
            void run(next, end)
              .catch(async () => { await new Promise(resolve => setTimeout(resolve, 1000)) })
              .finally(() => { fills--; poke(lazy) })
            next = end
            continue
          }
          if (next >= pieceCount && fills === 0) next = 0 // pieces a failed run left behind
        }
        if (t.complete) break
        await changed(lazy)
      }
      while (fills > 0) await changed(lazy)
      if (failure != null) throw failure
      await t.flush()
      if (ref.digest != null) {
        // named by a digest: the whole content must match it before the seed calls it done
        const h = createHash('sha256')
        for (let off = 0; off < t.info.contentLength; off += 4 * 1024 * 1024) h.update(await t.read(off, Math.min(4 * 1024 * 1024, t.info.contentLength - off)))
        if (`sha256:${h.digest('hex')}` !== ref.digest) throw new DigestMismatchError(`content of ${redactUrl(order.url)} does not match ${ref.digest}`)
      }
      if (last != null) this.client.send({ pieceDone: { taskId, numbers: [last.n], digests: [last.digest] } })
      this.client.send({ result: { taskId, success: true } })
      this.log.info('seeded', { task: taskId.slice(0, 12), bytes: t.info.contentLength })
    } catch (err) {
      this.log.warn('seeding failed', { task: taskId.slice(0, 12), err: (err as Error).message })
      this.client.send({ result: { taskId, success: false, error: toErrorInfo(err) } })
      await this.init.store.remove(taskId).catch(() => {})
    } finally {
      // whatever is still waited for is answered from the store as it is now (held, or refused)
      this.held(taskId, undefined, false)
    }
  }

  private async seed (order: NonNullable<SchedulerMessage['seed']>): Promise<void> {
    const { taskId } = order
    const tagged = {
      ...(order.digest != null && order.digest !== '' ? { digest: order.digest } : {}),
      ...(order.tag != null && order.tag !== '' ? { tag: order.tag } : {}),
      ...(order.version != null && order.version !== '' ? { version: order.version } : {})
    }
    const ref = { url: order.url, headers: order.headers ?? {}, ...tagged }
    const credentials = credentialHash(ref)
    const existing = await this.init.store.get(taskId).catch(() => null)
    if (existing?.complete === true) { this.announce(existing); return }
    const pinned = (order.version != null && order.version !== '') || (order.digest != null && order.digest !== '')
    if (pinned && !this.lazy.has(taskId) && this.lazy.size < SEED_LAZY_TASKS) {
      // content pinned by a version or a digest: fetched in Range runs, so the pieces someone waits
      // for (want) go out first, beside the fill
      const t: LazyTask = { wanted: new Set(order.numbers ?? []), whole: true, dirty: true, wake: undefined }
      this.lazy.set(taskId, t)
      try { await this.seedLazy(order, t) } finally { this.lazy.delete(taskId) }
      return
    }
    const named = namedLength(order)
    this.log.info('seeding', { task: taskId.slice(0, 12), url: order.url })
    this.stats.tasks++
    this.client.send({ register: { taskId, ...ref, ...(credentials != null ? { credentials } : {}), ...named } })
    try {
      const task = await fillFromSource({
        store: this.init.store,
        taskId,
        ref,
        meta: { ...ref, ...(credentials != null ? { credentials } : {}), ...named },
        ...(existing != null ? { task: existing } : {}),
        timeoutMs: this.init.originTimeoutMs,
        onInfo: (info) => { this.client.send({ sourceInfo: { taskId, info } }) },
        onPiece: (n, digest) => { this.client.send({ pieceDone: { taskId, numbers: [n], digests: [digest] } }) },
        onBytes: (n) => { this.stats.originBytes += n }
      })
      if (existing != null) this.announce(task)
      this.client.send({ result: { taskId, success: true } })
      this.log.info('seeded', { task: taskId.slice(0, 12), bytes: task.info.contentLength })
    } catch (err) {
      this.log.warn('seeding failed', { task: taskId.slice(0, 12), err: (err as Error).message })
      this.client.send({ result: { taskId, success: false, error: toErrorInfo(err) } })
      // what the origin sent under a failed transfer is not trusted: drop it, leave no partial entry
      await this.init.store.remove(taskId).catch(() => {})
    }
  }
}
