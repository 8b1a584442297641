/*
 * One download. Ownership: a PeerTask owns its parent connections and its in-flight table; the
 * StoredTask (shared with the piece server) owns the bytes. Every piece is verified against the
 * digest the scheduler relayed from a source before it is written, so a parent can cost time,
 * never correctness. `pump()` is the only place requests are issued.
 *
 * Parent use (PiecePolicy, pure, also driven by bench/sim): the scheduler lists parents best first.
 * - Chain mode (the parents message has no stripes): the first usable parent is the primary and gets
 *   every request; the others are backups, asked only in endgame or once nothing has arrived for
 *   stallMs() (STALL_MS, or STALL_GAPS times the task's recent time between pieces: the primary is slow,
 *   stalled or gone). Asking a backup while the primary delivers takes
 *   upload from the backup's own primary child, which a pipeline of equal links cannot spare
 *   (bench/fanout).
 * - Striped mode (stripe_count k > 0, the scheduler's striped trees of a large swarm): piece n belongs
 *   to stripe n mod k and the parent marked for that stripe is its primary; it gets every request for
 *   the stripe. A stripe arrives at 1/k of the download rate, so once its primary has offered a piece
 *   it counts as stalled after k x stallMs() without one of its pieces; before that, STRIPE_FILL_MS
 *   after another parent first offered one (a primary deep in the stripe's tree gets its first piece
 *   late, and backups asked meanwhile would take upload from their own stripe children); at once when
 *   it has no usable primary. A stalled stripe may be served by any parent. A stripe's clocks restart
 *   when its primary changes. Endgame and starving work as in chain mode.
 */
import { createHash, type Hash } from 'node:crypto'
import type { Libp2p } from 'libp2p'
import { multiaddr } from '@multiformats/multiaddr'
import { Bitmap, verifyPieceAsync, checkPieceDigest, equalBytes, MAX_PIECE_LENGTH, credentialHash } from '@guoce/content'
import { AbortError, DigestMismatchError, ParentTimeoutError, fromErrorInfo, toErrorInfo, type Logger, type TaskProgress, type TaskRequest, type PeerState, type TaskInfo } from '@guoce/interface'
import type { StoredTask, TaskStore } from '@guoce/store'
import { PieceConnection, type PieceChannel, Priority, type PeerMessage, type SchedulerMessage, type WireParent } from '@guoce/transfer'
import { fillFromSource, fetchRun, openLazy, announceHeld } from '@guoce/host'
import { PieceWaiters, type WaitOptions } from './piece-waiters.js'
import { ENDGAME_PIECES, PARENT_INFLIGHT, READ_INFLIGHT, PARENT_STALL_MS, MAX_STALL_MS, STALL_GAPS, GAP_WEIGHT, PARENT_STALL_CHECK_MS, PIECE_TIMEOUT_MS, PIECE_TIMEOUT_PER_MIB_MS, REPORT_DELAY_MS, REQUEST_BATCH, SCHEDULER_WAIT_MS, SEED_FETCH_REQUESTS, SEED_FETCH_RUN, STALL_MS, STARVE_MS, STRIPE_FILL_MS, TOTAL_INFLIGHT, WANT_RETRY_MS, MAX_WANT_PIECES } from './constants.js'

/** What piece selection reads of a parent. */
export interface ParentView {
  readonly id: string
  /** pieces it holds (undefined until the task's layout is known) */
  readonly bitmap: { has: (n: number) => boolean } | undefined
  /** pieces asked of it and not answered yet */
  readonly inflight: { readonly size: number }
  /** place in the scheduler's last list: 0 = first; Number.MAX_SAFE_INTEGER = no longer listed */
  readonly rank: number
  /** striped mode: bit s set = its primary for the pieces n with n mod k = s (0: a backup, or chain mode) */
  readonly stripes: number
}

/** What piece selection reads of a download. */
export interface DownloadView<P extends ParentView> {
  readonly pieceCount: number
  /** pieces held */
  readonly held: { has: (n: number) => boolean, readonly count: number }
  /** piece n may be requested (its digest is known) */
  known: (n: number) => boolean
  /** piece -> ids of the parents it is asked of */
  readonly requested: ReadonlyMap<number, ReadonlySet<string>>
  readonly parents: ReadonlyMap<string, P>
}

/** The result of one PiecePolicy.plan. */
export interface Plan {
  /** pieces in flight after it */
  total: number
  /** a parent holds a wanted piece it may not be asked for yet (no need to ask the scheduler) */
  heldBack: boolean
  /** when a stall limit is reached and the plan may change (undefined: no limit running) */
  wakeAt: number | undefined
}

/** The primary of chain mode: the listed parent with the lowest rank whose pieces are known. */
export function primaryOf<P extends ParentView> (parents: ReadonlyMap<string, P>): P | undefined {
  let best: P | undefined
  for (const p of parents.values()) if (p.bitmap != null && (best == null || p.rank < best.rank)) best = p
  return best
}

/** The primary of stripe `s` in striped mode, if it is usable (its pieces are known). */
export function stripePrimary<P extends ParentView> (parents: ReadonlyMap<string, P>, s: number): P | undefined {
  for (const p of parents.values()) if ((p.stripes & (1 << s)) !== 0 && p.bitmap != null) return p
  return undefined
}

/** Could `p` be asked for a piece now (held by it, lacked, digest known, not requested, let through by `allow`)? */
export function offers<P extends ParentView> (v: DownloadView<P>, p: P, allow?: (n: number) => boolean): boolean {
  for (let n = 0; n < v.pieceCount; n++) {
    if (v.held.has(n) || !v.known(n) || !(p.bitmap?.has(n) ?? false) || v.requested.has(n)) continue
    if (allow == null || allow(n)) return true
  }
  return false
}

/**
 * Rarest first among the pieces `p` holds that we lack and have not requested (endgame: not requested
 * of `p`), restricted to the pieces `allow` lets through.
 */
export function pickPieces<P extends ParentView> (v: DownloadView<P>, p: P, want: number, endgame: boolean, allow?: (n: number) => boolean, random: () => number = Math.random): number[] {
  const candidates: Array<{ n: number, rarity: number }> = []
  for (let n = 0; n < v.pieceCount; n++) {
    if (v.held.has(n) || !v.known(n) || !(p.bitmap?.has(n) ?? false)) continue
    if (allow != null && !allow(n)) continue
    const req = v.requested.get(n)
    if (req != null && (!endgame || req.has(p.id))) continue
    let rarity = 0
    for (const q of v.parents.values()) if (q.bitmap?.has(n) === true) rarity++
    candidates.push({ n, rarity: rarity + (req?.size ?? 0) * 100 })
  }
  candidates.sort((a, b) => a.rarity - b.rarity || a.n - b.n)
  // spread equal-rarity choices so children of one parent do not all chase the same pieces
  const best = candidates.slice(0, Math.max(want * 4, 8))
  for (let i = best.length - 1; i > 0; i--) {
    if (best[i]!.rarity !== best[0]!.rarity) continue
    const j = Math.floor(random() * (i + 1))
    if (best[j]!.rarity !== best[0]!.rarity) continue
    const t = best[i]!; best[i] = best[j]!; best[j] = t
  }
  best.sort((a, b) => a.rarity - b.rarity)
  return best.slice(0, want).map(c => c.n)
}

/**
 * Which parent is asked for which piece, and when backups may be asked (see the top of this file).
 * No timers and no I/O: the caller passes its clock, and PeerTask and bench/sim drive the same code.
 */
export class PiecePolicy {
  /** stripes of the task (0 = chain mode) */
  private k = 0
  /** chain mode: last progress (a piece arrived, a new primary, the first piece on offer) */
  private lastGain: number | undefined
  /** striped mode, per stripe: last progress (one of its pieces arrived, a new primary, the primary's first on offer) */
  private gains: Array<number | undefined> = []
  /** striped mode, per stripe: when another parent first offered one of its pieces (the primary none yet) */
  private offered: Array<number | undefined> = []
  /** striped mode, per stripe: the id of its primary in the last list */
  private owners: Array<string | undefined> = []
  /** when the last piece arrived, and the moving average of the time between arrivals (the task's pace) */
  private lastArrival: number | undefined
  private gap = 0

  constructor (private readonly random: () => number = Math.random) {}

  get stripes (): number { return this.k }

  /**
   * A new parent list was applied to `parents` (ranks and stripes); `oldPrimary` is the chain primary
   * before it, `k` the list's stripe count (0: chain mode).
   */
  onParents<P extends ParentView> (parents: ReadonlyMap<string, P>, k: number, oldPrimary: P | undefined, now: number): void {
    if (primaryOf(parents) !== oldPrimary && this.lastGain != null) this.lastGain = now
    if (k !== this.k) {
      this.k = k
      this.gains = new Array<number | undefined>(k).fill(undefined)
      this.offered = new Array<number | undefined>(k).fill(undefined)
      this.owners = new Array<string | undefined>(k).fill(undefined)
    }
    for (let s = 0; s < k; s++) {
      let owner: string | undefined
      for (const p of parents.values()) if ((p.stripes & (1 << s)) !== 0) { owner = p.id; break }
      if (owner === this.owners[s]) continue
      this.owners[s] = owner
      if (this.gains[s] != null) this.gains[s] = now
      if (this.offered[s] != null) this.offered[s] = now
    }
  }

  /**
   * Time without a piece after which the primary counts as stalled: STALL_MS, or STALL_GAPS times the
   * task's recent time between pieces when that is longer (a task sharing its links with others gets a
   * piece less often, and asking backups then only takes upload from their own children), at most
   * MAX_STALL_MS.
   */
  stallMs (): number {
    return Math.min(MAX_STALL_MS, Math.max(STALL_MS, STALL_GAPS * this.gap))
  }

  /** Piece `n` arrived. */
  onPiece (n: number, now: number): void {
    // the pace: gaps longer than MAX_STALL_MS are stalls, not the pace
    if (this.lastArrival != null) {
      const g = now - this.lastArrival
      if (g <= MAX_STALL_MS) this.gap = this.gap === 0 ? g : this.gap + (g - this.gap) * GAP_WEIGHT
    }
    this.lastArrival = now
    this.lastGain = now
    if (this.k > 0) this.gains[n % this.k] = now
  }

  /** Is stripe `s` open to every parent (endgame, no usable primary, or stalled)? */
  stripeOpen<P extends ParentView> (v: DownloadView<P>, s: number, now: number): boolean {
    if (v.pieceCount - v.held.count <= ENDGAME_PIECES) return true
    if (stripePrimary(v.parents, s) == null) return true
    const until = this.stallsAt(s)
    return until != null && now >= until
  }

  /** When stripe `s` counts as stalled if nothing changes (undefined: its clocks have not started). */
  private stallsAt (s: number): number | undefined {
    const g = this.gains[s]
    if (g != null) return g + this.k * this.stallMs()
    const o = this.offered[s]
    return o != null ? o + STRIPE_FILL_MS : undefined
  }

  /**
   * Ask parents for pieces while there is capacity. `issue(p, numbers)` must record the request at
   * once (p.inflight, v.requested): the plan reads them for its next choice.
   */
  plan<P extends ParentView> (v: DownloadView<P>, now: number, issue: (p: P, numbers: number[]) => void): Plan {
    let total = 0
    for (const p of v.parents.values()) total += p.inflight.size
    const endgame = v.pieceCount - v.held.count <= ENDGAME_PIECES
    return this.k > 0 ? this.planStriped(v, now, issue, total, endgame) : this.planChain(v, now, issue, total, endgame)
  }

  private planChain<P extends ParentView> (v: DownloadView<P>, now: number, issue: (p: P, numbers: number[]) => void, total: number, endgame: boolean): Plan {
    const primary = primaryOf(v.parents)
    if (this.lastGain == null && primary != null && [...v.parents.values()].some(p => offers(v, p))) this.lastGain = now
    // backups: in endgame, or when nothing has arrived for stallMs()
    const stall = this.stallMs()
    const stalled = this.lastGain != null && now - this.lastGain >= stall
    const backups = endgame || stalled
    let heldBack = false
    let issued = true
    while (issued && total < TOTAL_INFLIGHT) {
      issued = false
      // the primary first, then backups with the most idle capacity
      const order = [...v.parents.values()].filter(p => p.bitmap != null && p.inflight.size < PARENT_INFLIGHT).sort((a, b) => (a === primary ? -1 : b === primary ? 1 : a.inflight.size - b.inflight.size))
      for (const p of order) {
        if (p !== primary && !backups) {
          if (!heldBack && offers(v, p)) heldBack = true
          continue
        }
        const want = Math.min(REQUEST_BATCH, PARENT_INFLIGHT - p.inflight.size, TOTAL_INFLIGHT - total)
        if (want <= 0) continue
        const picks = pickPieces(v, p, want, endgame, undefined, this.random)
        if (picks.length === 0) continue
        total += picks.length
        issued = true
        issue(p, picks)
      }
    }
    return { total, heldBack, wakeAt: this.lastGain != null ? this.lastGain + stall : undefined }
  }

  private planStriped<P extends ParentView> (v: DownloadView<P>, now: number, issue: (p: P, numbers: number[]) => void, total: number, endgame: boolean): Plan {
    const k = this.k
    let open = 0
    for (let s = 0; s < k; s++) {
      // a stripe's clocks start once its primary, or else another parent, has one of its pieces on offer
      const inStripe = (n: number): boolean => n % k === s
      if (this.gains[s] == null) {
        const own = stripePrimary(v.parents, s)
        if (own != null && offers(v, own, inStripe)) this.gains[s] = now
        else if (this.offered[s] == null && [...v.parents.values()].some(p => offers(v, p, inStripe))) this.offered[s] = now
      }
      if (this.stripeOpen(v, s, now)) open |= 1 << s
    }
    let heldBack = false
    let issued = true
    while (issued && total < TOTAL_INFLIGHT) {
      issued = false
      // stripe primaries first, then backups with the most idle capacity
      const order = [...v.parents.values()].filter(p => p.bitmap != null && p.inflight.size < PARENT_INFLIGHT).sort((a, b) => Number(b.stripes !== 0) - Number(a.stripes !== 0) || a.inflight.size - b.inflight.size)
      for (const p of order) {
        const mine = p.stripes | open
        const want = Math.min(REQUEST_BATCH, PARENT_INFLIGHT - p.inflight.size, TOTAL_INFLIGHT - total)
        if (want <= 0) continue
        const picks = mine === 0 ? [] : pickPieces(v, p, want, endgame, n => ((mine >> (n % k)) & 1) === 1, this.random)
        if (picks.length === 0) {
          // it holds pieces of a stripe whose primary still delivers
          if (!heldBack && offers(v, p)) heldBack = true
          continue
        }
        total += picks.length
        issued = true
        issue(p, picks)
      }
    }
    let wakeAt: number | undefined
    for (let s = 0; s < k; s++) {
      const until = this.stallsAt(s)
      if ((open & (1 << s)) === 0 && until != null) wakeAt = Math.min(wakeAt ?? Infinity, until)
    }
    return { total, heldBack, wakeAt }
  }
}

/**
 * Pieces reads wait for, asked first and at their read's priority (`wanted`: piece -> wire priority,
 * lower first). Each goes to a parent that holds it with the fewest pieces in flight (then the best
 * rank), up to PARENT_INFLIGHT + READ_INFLIGHT per parent: the parent serves them ahead of the
 * background requests already queued there. A wanted piece already in flight is left where it is.
 * Pure: `issue(p, numbers, priority)` must record the request at once (p.inflight, v.requested).
 * Returns the pieces asked.
 */
export function planWanted<P extends ParentView> (v: DownloadView<P>, wanted: ReadonlyMap<number, number>, issue: (p: P, numbers: number[], priority: number) => void): number {
  const added = new Map<P, number>()
  const batches = new Map<P, Map<number, number[]>>()
  let asked = 0
  const order = [...wanted].sort((a, b) => a[1] - b[1] || a[0] - b[0])
  for (const [n, priority] of order) {
    if (n < 0 || n >= v.pieceCount || v.held.has(n) || !v.known(n) || v.requested.has(n)) continue
    let best: P | undefined
    let bestLoad = Infinity
    for (const p of v.parents.values()) {
      if (p.bitmap?.has(n) !== true) continue
      const load = p.inflight.size + (added.get(p) ?? 0)
      if (load >= PARENT_INFLIGHT + READ_INFLIGHT) continue
      if (load < bestLoad || (load === bestLoad && best != null && p.rank < best.rank)) { best = p; bestLoad = load }
    }
    if (best == null) continue
    added.set(best, (added.get(best) ?? 0) + 1)
    let byPriority = batches.get(best)
    if (byPriority == null) batches.set(best, byPriority = new Map())
    let list = byPriority.get(priority)
    if (list == null) byPriority.set(priority, list = [])
    list.push(n)
    asked++
  }
  for (const [p, byPriority] of batches) {
    for (const [priority, numbers] of [...byPriority].sort((a, b) => a[0] - b[0])) issue(p, numbers, priority)
  }
  return asked
}

interface ParentState extends ParentView {
  addrs: string[]
  bitmap: Bitmap | undefined
  conn: PieceConnection | undefined
  connecting: Promise<PieceConnection> | undefined
  inflight: Set<number>
  bytes: number
  rank: number
  stripes: number
  /** stall check: bytes the connection had received at the last sample, and when that count last moved */
  seenBytes: number
  movedAt: number
  /** busy frames the connection had received at the last sample (the parent is alive, serving others first) */
  seenBusy: number
  /**
   * Silent for PARENT_STALL_MS on this connection while other connections from the same host still
   * bring bytes (or not yet long enough to be called hung): its pieces were handed to other parents and
   * it gets no new request until it sends again.
   */
  silent: boolean
  /**
   * The task's designated seed (Parent.seed): it holds or fetches every piece and the origin is the only
   * alternative to it, so its silence is waited out (its pieces asked of others meanwhile), never blamed
   * as a stall; a seed that is really gone leaves the scheduler (SCHEDULER_IDLE_TIMEOUT_MS), which then
   * orders a new source.
   */
  seed: boolean
  /**
   * What the scheduler said the parent holds before this task's layout was known (the parents message's
   * bitmap, `have` numbers, at most EARLY_HAVES of them): applied when the layout comes, else those
   * pieces would stay unknown until the next parents message (often only when the parent completes).
   */
  early?: { bitmap?: Uint8Array, haves: number[] }
}

/** Parent hosts remembered in PeerTaskInit.heard. */
const MAX_HEARD = 4096

/** `have` numbers kept per parent while the task's layout is not known. */
const EARLY_HAVES = 65_536

/** Errors after which a parent is blamed to the scheduler (not only dropped). */
const BLAMED = new Set(['PieceDigestMismatchError', 'ParentTimeoutError', 'PeerViolationError'])

/** Pieces a task may have before its layout is known (4 TiB at the smallest piece length). */
const MAX_PIECES = 4 * 1024 * 1024

/** Stripes a parent's bitmask can name. */
const MAX_STRIPES = 32

export interface PeerTaskInit {
  taskId: string
  request: TaskRequest
  node: Libp2p
  store: TaskStore
  send: (msg: PeerMessage) => boolean
  log: Logger
  originTimeoutMs?: number
  /** how piece bytes travel from parents @default 'stream' */
  pieceChannel?: PieceChannel
  onStats?: (kind: 'peer' | 'source', bytes: number) => void
  onBlame?: (parent: string, reason: Error) => void
  /** a parent with requests in flight said it is busy (its answers to us wait behind its other children) */
  onBusy?: (parent: string) => void
  /** a parent's connection went silent while its host still sent to other downloads (its pieces went to others) */
  onSilent?: (parent: string) => void
  /**
   * Shared by the daemon's downloads: when a byte last came from each parent host on any of their piece
   * connections. A parent whose connection for this task is silent is hung only if the host is silent
   * on all of them; a host that still sends to our other downloads is busy (e.g. one TCP flow of many
   * through its shaped uplink starved for seconds).
   */
  heard?: Map<string, number>
  /** a piece connection to a parent opened, over this channel */
  onConnection?: (channel: string) => void
  /** a parent list arrived: `striped` when it names stripe parents (stripe_count > 0), else `chain` */
  onParentList?: (mode: 'chain' | 'striped') => void
}

export class PeerTask {
  state: PeerState = 'pending'
  stored: StoredTask | undefined
  digests: Array<Uint8Array | undefined> = []
  readonly parents = new Map<string, ParentState>()
  private readonly requested = new Map<number, Set<string>>()
  piecesFromStore = 0
  piecesFromPeers = 0
  piecesFromSource = 0
  error: Error | undefined
  private readonly done = Promise.withResolvers<void>()
  private readonly listeners = new Set<() => void>()
  private readonly log: Logger
  private starveTimer: NodeJS.Timeout | undefined
  private waitTimer: NodeJS.Timeout | undefined
  private reportQueue: number[] = []
  private reportTimer: NodeJS.Timeout | undefined
  private sourcing: Promise<void> | undefined
  private isSource = false
  private creating: Promise<StoredTask> | undefined
  private readonly blamed = new Set<string>()
  private readonly policy = new PiecePolicy()
  /** reads waiting for pieces (or for the layout); their pieces are requested first */
  private readonly waiters: PieceWaiters
  private stallTimer: NodeJS.Timeout | undefined
  /** the next patient read comes due (PieceWaiters.due): pump again then */
  private dueTimer: NodeJS.Timeout | undefined
  private parentWatch: NodeJS.Timeout | undefined
  /** when the stall check last ran (a late tick means this process was not running) */
  private lastWatch = 0
  /** ranged reads only (request.ranged): fetch what reads ask for, no background fill, until upgrade() */
  private lazy: boolean
  /** lazy: when each wanted piece was last asked of the scheduler (want), so it is asked again only after WANT_RETRY_MS */
  private readonly wantAt = new Map<number, number>()
  /** lazy and sent back to source: the origin fetches in flight, by first piece */
  private readonly sourceRuns = new Map<number, Promise<void>>()

  constructor (private readonly init: PeerTaskInit) {
    this.log = init.log.child({ component: 'peer:task', task: init.taskId.slice(0, 12) })
    this.done.promise.catch(() => {})
    this.lazy = init.request.ranged === true
    this.waiters = new PieceWaiters(`task ${init.taskId.slice(0, 12)}`, () => { if (!this.pumpQueued) { this.pumpQueued = true; queueMicrotask(() => { this.pumpQueued = false; this.pump() }) } })
  }

  private pumpQueued = false

  /** The request the task stands for (its URL, digest...). */
  get request (): TaskRequest { return this.init.request }
  /** The digest the whole content must have, when the task is named by one. */
  get digest (): string | undefined { return this.init.request.digest }

  /** Reads waiting on this task now. */
  get readsWaiting (): number { return this.waiters.size }

  /**
   * The stored task once its layout is known. Rejects with the task's error if it fails,
   * ReadTimeoutError after `o.timeoutMs`, AbortError when `o.signal` aborts.
   */
  async whenLayout (o: WaitOptions): Promise<StoredTask> {
    for (;;) {
      if (this.state === 'failed') throw this.error ?? new AbortError('the task failed')
      if (this.stored != null) return this.stored
      await this.waiters.layout(o)
    }
  }

  /**
   * The stored task once piece `n` is held (verified and written). Until then `n` is wanted: the
   * task asks parents for it ahead of background fill, at `o.priority`. Rejects like whenLayout.
   */
  async whenPiece (n: number, o: WaitOptions): Promise<StoredTask> {
    for (;;) {
      if (this.state === 'failed') throw this.error ?? new AbortError('the task failed')
      const s = this.stored
      if (s != null && s.bitmap.has(n)) return s
      if (s == null) { await this.waiters.layout(o); continue }
      if (n < 0 || n >= s.info.pieceCount) throw new RangeError(`piece ${n} outside the task's ${s.info.pieceCount} pieces`)
      await this.waiters.piece(n, o)
    }
  }

  /** Whether only what is read is fetched (a ranged-read task not yet upgraded). */
  get isLazy (): boolean { return this.lazy }

  /** A whole download joins a lazy task: from now on every piece is fetched. */
  upgrade (): void {
    if (!this.lazy) return
    this.lazy = false
    if (this.state === 'running') this.register()
    if (this.state === 'back-to-source' && this.sourcing == null) { this.state = 'running'; this.goToSource('a whole download joined a ranged task fetched from the origin') }
    this.pump()
  }

  get taskId (): string { return this.init.taskId }
  get finished (): Promise<void> { return this.done.promise }
  get info (): TaskInfo | undefined { return this.stored?.info }

  onProgress (fn: () => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  private emit (): void { for (const l of this.listeners) l() }

  progress (): TaskProgress {
    const s = this.stored
    const p: TaskProgress = {
      taskId: this.taskId,
      state: this.state,
      piecesDone: s?.bitmap.count ?? 0,
      bytesDone: s == null ? 0 : Math.min(s.info.contentLength, s.bitmap.count * s.info.pieceLength),
      piecesFromStore: this.piecesFromStore,
      piecesFromPeers: this.piecesFromPeers,
      piecesFromSource: this.piecesFromSource
    }
    if (s != null) { p.contentLength = s.info.contentLength; p.pieceCount = s.info.pieceCount }
    if (s?.complete === true) p.bytesDone = s.info.contentLength
    if (this.error != null) p.error = { name: this.error.name, code: (this.error as { code?: string }).code ?? 'ERR_UNKNOWN', message: this.error.message }
    return p
  }

  /** Start (or resume from the store). */
  async start (): Promise<void> {
    this.state = 'running'
    const existing = await this.init.store.get(this.taskId)
    if (existing != null) {
      this.stored = existing
      this.piecesFromStore = existing.bitmap.count
      this.digests = [...existing.digests]
      this.waiters.layoutKnown()
      if (existing.complete) {
        await this.succeed()
        return
      }
    }
    this.register()
    this.waitTimer = setTimeout(() => {
      if (this.stored == null && this.state === 'running') {
        this.log.warn('no task layout from the scheduler in time; going to the origin')
        this.goToSource('scheduler did not answer')
      }
    }, SCHEDULER_WAIT_MS)
    this.waitTimer.unref()
    this.emit()
  }

  /** (Re-)register with the scheduler: on start and after every reconnect. */
  register (): void {
    const r = this.init.request
    const s = this.stored
    this.init.send({
      register: {
        taskId: this.taskId,
        url: r.url,
        headers: r.headers ?? {},
        ...(r.digest != null ? { digest: r.digest } : {}),
        ...(r.tag != null ? { tag: r.tag } : {}),
        ...this.idFields(),
        ...(s != null ? { bitmap: s.bitmap.bytes, completed: s.complete } : {}),
        ...(this.lazy ? { lazy: true } : {})
      }
    })
    if (this.isSource && s != null) announceHeld(this.init.send, s)
  }

  /** version, credentials and piece length: with url, digest and tag the fields the scheduler derives the task id from */
  private idFields (): { version?: string, credentials?: string, pieceLength?: number } {
    const r = this.init.request
    const credentials = credentialHash(r)
    return { ...(r.version != null && r.version !== '' ? { version: r.version } : {}), ...(credentials != null ? { credentials } : {}), ...(r.pieceLength != null ? { pieceLength: r.pieceLength } : {}) }
  }

  /** Scheduler disconnected: parents we have keep serving; nothing else to do. */
  onSchedulerMessage (msg: SchedulerMessage): void {
    if (this.state !== 'running' && this.state !== 'back-to-source') return
    if (msg.taskInfo != null) void this.onTaskInfo(msg.taskInfo.info)
    if (msg.digests != null) {
      const { numbers, digests } = msg.digests
      // piece numbers inside the layout (before it is known, inside the largest one a layout may have)
      const limit = this.stored?.info.pieceCount ?? MAX_PIECES
      numbers.forEach((n, i) => {
        const d = digests[i]
        if (d == null || d.length !== 32 || !Number.isInteger(n) || n < 0 || n >= limit) return
        const held = this.stored?.digests[n]
        if (held != null && !equalBytes(held, d)) this.log.warn('announced digest differs from the held piece', { piece: n })
        this.digests[n] = d
      })
      this.pump()
    }
    if (msg.parents != null) this.onParents(msg.parents.parents ?? [], msg.parents.stripeCount ?? 0)
    if (msg.have != null) {
      const p = this.parents.get(msg.have.peerId)
      if (p?.bitmap != null) for (const n of msg.have.numbers ?? []) if (n < p.bitmap.size) p.bitmap.set(n)
      if (p != null && p.bitmap == null) {
        p.early ??= { haves: [] }
        for (const n of msg.have.numbers ?? []) if (Number.isInteger(n) && n >= 0 && p.early.haves.length < EARLY_HAVES) p.early.haves.push(n)
      }
      this.pump()
    }
    if (msg.backToSource != null) this.goToSource(msg.backToSource.reason)
    if (msg.failed != null) void this.fail(fromErrorInfo(msg.failed.error))
  }

  private async onTaskInfo (info: { contentLength: number, pieceLength: number, pieceCount: number }): Promise<void> {
    // a layout is bounded before anything is allocated for it (bitmaps, piece buffers)
    const { contentLength, pieceLength, pieceCount } = info
    if (!Number.isSafeInteger(contentLength) || contentLength < 0 || !Number.isSafeInteger(pieceLength) || pieceLength < 1 ||
      pieceLength > MAX_PIECE_LENGTH || pieceCount !== Math.ceil(contentLength / pieceLength)) {
      this.log.warn('task layout out of bounds ignored', { contentLength, pieceLength, pieceCount })
      return
    }
    clearTimeout(this.waitTimer)
    if (this.stored != null && this.stored.info.contentLength === info.contentLength && this.stored.info.pieceLength === info.pieceLength) return
    if (this.creating != null) return
    const r = this.init.request
    this.creating = this.init.store.create(this.taskId, { taskId: this.taskId, ...info }, { url: r.url, ...(r.headers != null ? { headers: r.headers } : {}), ...(r.digest != null ? { digest: r.digest } : {}), ...(r.tag != null ? { tag: r.tag } : {}), ...this.idFields() })
    try {
      this.stored = await this.creating
      if (this.digests.length !== info.pieceCount) {
        const old = this.digests
        this.digests = new Array(info.pieceCount).fill(undefined)
        old.forEach((d, i) => { if (i < info.pieceCount) this.digests[i] = d })
      }
      for (const p of this.parents.values()) {
        if (p.bitmap != null && p.bitmap.size === info.pieceCount) continue
        const early = p.early
        p.early = undefined
        p.bitmap = new Bitmap(info.pieceCount, early?.bitmap != null && early.bitmap.length === Math.ceil(info.pieceCount / 8) ? early.bitmap : undefined)
        for (const n of early?.haves ?? []) if (n < info.pieceCount) p.bitmap.set(n)
      }
      this.waiters.layoutKnown()
      this.emit()
      this.pump()
    } catch (err) {
      await this.fail(err as Error)
    } finally {
      this.creating = undefined
    }
  }

  /** `stripeCount`: the task's stripes (0 = chain mode) */
  private onParents (list: WireParent[], stripeCount: number): void {
    const keep = new Set<string>()
    const count = this.stored?.info.pieceCount
    const oldPrimary = primaryOf(this.parents)
    const k = stripeCount <= MAX_STRIPES ? stripeCount : 0
    this.init.onParentList?.(k > 0 ? 'striped' : 'chain')
    let rank = 0
    for (const wp of list) {
      if (this.blamed.has(wp.peerId)) continue
      keep.add(wp.peerId)
      let p = this.parents.get(wp.peerId)
      if (p == null) {
        p = { id: wp.peerId, addrs: (wp.addrs ?? []).map(a => multiaddr(a).toString()), bitmap: undefined, conn: undefined, connecting: undefined, inflight: new Set(), bytes: 0, rank, stripes: 0, seenBytes: 0, movedAt: Date.now(), seenBusy: 0, silent: false, seed: false }
        this.parents.set(wp.peerId, p)
      }
      p.rank = rank++
      p.stripes = k > 0 ? (wp.stripes ?? 0) : 0
      p.seed = wp.seed === true
      // a lazy task's reads go to its seed first (fetchFromSeed): the piece connection is opened now, not on
      // the first read (bench/containerd: the first prefetched reads waited 0.2-0.35 s for it)
      if (p.seed && this.lazy && p.conn == null && p.connecting == null) {
        const seed = p
        this.connection(seed).catch((err: unknown) => { this.log.debug('seed connection not opened ahead', { parent: seed.id, err: (err as Error).message }) })
      }
      if (count != null) {
        const b = new Bitmap(count, wp.bitmap != null && wp.bitmap.length > 0 ? wp.bitmap : undefined)
        if (p.bitmap == null) p.bitmap = b
        else for (const n of b.present()) p.bitmap.set(n)
      } else if (wp.bitmap != null && wp.bitmap.length > 0) {
        // no layout yet: kept for when it comes (bounded by the scheduler message's own size)
        p.early ??= { haves: [] }
        p.early.bitmap = Uint8Array.from(wp.bitmap)
      }
    }
    for (const [id, p] of this.parents) {
      if (!keep.has(id)) {
        p.rank = Number.MAX_SAFE_INTEGER
        p.stripes = 0
        if (p.inflight.size === 0) { p.conn?.close(); this.parents.delete(id) }
      }
    }
    this.policy.onParents(this.parents, k, oldPrimary, Date.now())
    this.pump()
  }

  /** Issue requests while there is capacity. */
  private pump (): void {
    const s = this.stored
    if (s == null || this.state !== 'running') return
    if (s.complete) { this.succeedOrFail(); return }
    const now = Date.now()
    const view: DownloadView<ParentState> = { pieceCount: s.info.pieceCount, held: s.bitmap, known: n => this.digests[n] != null, requested: this.requested, parents: this.askable() }
    // what reads wait for goes first, at their priority; background fill takes what capacity is left
    const wanted = this.waiters.wanted()
    if (wanted.size > 0) planWanted(view, wanted, (p, picks, priority) => { void this.requestFrom(p, picks, priority) })
    if (this.lazy) { this.askForWanted(wanted, now); return }
    const { total, heldBack, wakeAt } = this.policy.plan(view, now, (p, picks) => { void this.requestFrom(p, picks, Priority.BACKGROUND) })
    // a read ahead of every parent: its pieces are asked of the seed first; a read that follows the
    // download (a stream) gives the task's parents the stall limit to bring them first
    if (wanted.size > 0 && !this.isSource) {
      const { due, wakeAt: dueAt } = this.waiters.due(now, this.policy.stallMs())
      this.askForWanted(due, now)
      if (dueAt != null && this.dueTimer == null) {
        this.dueTimer = setTimeout(() => { this.dueTimer = undefined; this.pump() }, Math.max(1, dueAt - now))
        this.dueTimer.unref()
      }
    }
    if (total === 0 && !heldBack) this.armStarve()
    else this.disarmStarve()
    // a backup has what we need: look again when the stall limit is reached
    if (heldBack && this.stallTimer == null && wakeAt != null) {
      this.stallTimer = setTimeout(() => { this.stallTimer = undefined; this.pump() }, Math.max(1, wakeAt - now))
      this.stallTimer.unref()
    }
  }

  /**
   * Lazy task: wanted pieces that no parent holds and none is asked of are asked of the scheduler
   * (want: the seed fetches them first), at most every WANT_RETRY_MS per piece.
   */
  private askForWanted (wanted: Map<number, number>, now: number): void {
    const s = this.stored!
    const ask: number[] = []
    let priority = Priority.BACKGROUND as number
    for (const [n, pr] of wanted) {
      if (s.bitmap.has(n) || this.requested.has(n)) continue
      if (!this.isSource && this.digests[n] != null && this.parentHolds(n)) continue
      if (now - (this.wantAt.get(n) ?? -Infinity) < WANT_RETRY_MS) continue
      this.wantAt.set(n, now)
      ask.push(n)
      if (pr < priority) priority = pr
    }
    for (const n of this.wantAt.keys()) if (!wanted.has(n)) this.wantAt.delete(n)
    if (ask.length === 0) return
    if (this.isSource) { this.fetchFromSource(ask); return }
    // a lazy task's reads ask the seed itself too; a whole download's reads ahead of its parents only the
    // scheduler (bench/mirror with both: one run of 170 s with the seed uploading 3.7x the image, the stream
    // fronts of every node served by the seed again)
    if (this.lazy) this.fetchFromSeed(ask, priority)
    for (let i = 0; i < ask.length; i += MAX_WANT_PIECES) this.init.send({ want: { taskId: this.taskId, numbers: ask.slice(i, i + MAX_WANT_PIECES), priority } })
    // asked again unless a piece arrives first
    if (this.stallTimer == null) {
      this.stallTimer = setTimeout(() => { this.stallTimer = undefined; this.pump() }, WANT_RETRY_MS)
      this.stallTimer.unref()
    }
  }

  /**
   * Pieces a ranged read of a lazy task waits for that no parent holds, asked of the task's designated seed itself with `fetch`
   * (one request per run of adjacent pieces, SEED_FETCH_REQUESTS at most in flight): the seed fetches what it
   * lacks and answers once it holds it, so the piece comes over one hop instead of want -> scheduler -> seed
   * order -> piece_done -> scheduler -> digests -> request (a cold 128 KiB piece: about 9 -> 5 ms on loopback).
   * The want goes to the scheduler as well (the seed fetches each piece once), so nothing depends on this path.
   */
  private fetchFromSeed (ask: number[], priority: number): void {
    let seed: ParentState | undefined
    for (const p of this.parents.values()) if (p.seed && !p.silent) { seed = p; break }
    if (seed == null) return
    const sorted = [...ask].sort((a, b) => a - b)
    for (let i = 0; i < sorted.length && this.seedFetches < SEED_FETCH_REQUESTS;) {
      let j = i + 1
      while (j < sorted.length && sorted[j] === sorted[j - 1]! + 1 && j - i < SEED_FETCH_RUN) j++
      const run = sorted.slice(i, j)
      i = j
      this.seedFetches++
      void this.requestFrom(seed, run, priority, true).finally(() => { this.seedFetches-- })
    }
  }
  private seedFetches = 0

  /** Whether some parent holds piece `n` (no copy of the parent table: pump() runs this per wanted piece). */
  private parentHolds (n: number): boolean {
    for (const p of this.parents.values()) if (!p.silent && p.bitmap?.has(n) === true) return true
    return false
  }

  /** The parents that may be asked now: all but the silent ones (the table itself when none is). */
  private askable (): ReadonlyMap<string, ParentState> {
    for (const p of this.parents.values()) {
      if (p.silent) return new Map([...this.parents].filter(([, q]) => !q.silent))
    }
    return this.parents
  }

  /** Hand a silent parent's pieces to the others: they may be asked elsewhere (its answers still count if they come). */
  private release (p: ParentState): void {
    for (const n of p.inflight) {
      const set = this.requested.get(n)
      set?.delete(p.id)
      if (set?.size === 0) this.requested.delete(n)
    }
  }

  /** A silent parent sends again: what it is still asked for counts as requested of it again. */
  private reclaim (p: ParentState): void {
    for (const n of p.inflight) {
      let set = this.requested.get(n)
      if (set == null) this.requested.set(n, set = new Set())
      set.add(p.id)
    }
  }

  /** A byte came from parent host `id` (shared with the daemon's other downloads, most recent last, bounded). */
  private hear (id: string, now: number): void {
    const heard = this.init.heard
    if (heard == null) return
    heard.delete(id)
    heard.set(id, now)
    if (heard.size > MAX_HEARD) heard.delete(heard.keys().next().value!)
  }

  /** Lazy task sent back to source: the wanted pieces by Range requests, adjacent ones together. */
  private fetchFromSource (numbers: number[]): void {
    const s = this.stored!
    numbers.sort((a, b) => a - b)
    for (let i = 0; i < numbers.length;) {
      let j = i + 1
      while (j < numbers.length && numbers[j] === numbers[j - 1]! + 1) j++
      const n = numbers[i]!; const end = numbers[j - 1]! + 1
      i = j
      if (this.sourceRuns.has(n)) continue
      const r = this.init.request
      const run = fetchRun({
        store: this.init.store,
        taskId: this.taskId,
        ref: { url: r.url, headers: r.headers ?? {}, ...(r.digest != null ? { digest: r.digest } : {}), ...(r.version != null && r.version !== '' ? { version: r.version } : {}) },
        digests: this.digests,
        timeoutMs: this.init.originTimeoutMs,
        onPiece: (k, _digest, bytes) => {
          this.piecesFromSource++
          this.init.onStats?.('source', bytes)
          this.policy.onPiece(k, Date.now())
          this.reportPiece(k)
        }
      }, s, n, end).catch((err: Error) => {
        this.log.warn('origin range failed', { pieces: `${n}-${end - 1}`, err: err.message })
        if (err.name === 'ContentChangedError') void this.fail(err)
      }).finally(() => {
        this.sourceRuns.delete(n)
        if (s.complete) this.succeedOrFail()
        else this.pump()
      })
      this.sourceRuns.set(n, run)
    }
  }

  private async connection (p: ParentState): Promise<PieceConnection> {
    if (p.conn?.isOpen === true) return p.conn
    p.connecting ??= PieceConnection.open(this.init.node, p.addrs, { signal: AbortSignal.timeout(5_000), channel: this.init.pieceChannel ?? 'stream' }).finally(() => { p.connecting = undefined })
    p.conn = await p.connecting
    this.init.onConnection?.(p.conn.channel)
    return p.conn
  }

  private async requestFrom (p: ParentState, numbers: number[], priority: number, fetch = false): Promise<void> {
    // a parent's stall clock runs only while it has requests in flight
    if (p.inflight.size === 0) { p.movedAt = Date.now(); p.seenBytes = p.conn?.received ?? 0 }
    this.watchParents()
    for (const n of numbers) {
      p.inflight.add(n)
      let set = this.requested.get(n)
      if (set == null) this.requested.set(n, set = new Set())
      set.add(p.id)
    }
    const s = this.stored!
    const bytes = numbers.length * s.info.pieceLength
    const timeout = PIECE_TIMEOUT_MS + PIECE_TIMEOUT_PER_MIB_MS * bytes / (1024 * 1024) * (1 + p.inflight.size / REQUEST_BATCH)
    let timer: NodeJS.Timeout | undefined
    let conn: PieceConnection | undefined
    let busy0 = 0
    try {
      conn = await this.connection(p)
      busy0 = conn.busy
      const writes: Array<Promise<void>> = []
      let bad: Error | undefined
      await Promise.race([
        conn.request({ taskId: this.taskId, numbers, priority, ...(fetch ? { fetch: true } : {}) }, (r) => {
          if ('refused' in r) return
          writes.push(this.accept(p, r.n, r.data, r.digest, r.claimedDigest).catch((err: Error) => { bad ??= err }).finally(r.release))
        }, s.info.pieceLength),
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => { reject(new ParentTimeoutError(`parent ${p.id} sent nothing for ${Math.round(timeout)} ms`)) }, timeout)
        })
      ])
      await Promise.all(writes)
      if (bad != null) throw bad
    } catch (err) {
      const e = err as Error
      // a request that timed out while its parent said it was busy, or while the parent host kept sending
      // to our other downloads: a slow parent, not a hung one; it is dropped (its pieces go to others,
      // the scheduler is asked for parents) but not blamed
      const busy = e.name === 'ParentTimeoutError' && (p.seed || (conn != null && conn.busy > busy0) || Date.now() - (this.init.heard?.get(p.id) ?? -Infinity) < PARENT_STALL_MS)
      this.log.debug('request failed', { parent: p.id, err: e.message, busy })
      if (this.parents.get(p.id) === p) this.dropParent(p, BLAMED.has(e.name) && !busy ? e : undefined)
    } finally {
      clearTimeout(timer)
      for (const n of numbers) {
        p.inflight.delete(n)
        const set = this.requested.get(n)
        set?.delete(p.id)
        if (set?.size === 0) this.requested.delete(n)
      }
      // a silent parent that answered what it was asked may be asked again
      if (p.inflight.size === 0) p.silent = false
      this.pump()
    }
  }

  /**
   * One timer per download while parents have requests in flight. A parent whose connection received no
   * byte for PARENT_STALL_MS is silent: its pieces go to the other parents at once and it is asked
   * nothing more until it sends again. It is hung, blamed (ParentTimeoutError), only if its host sent
   * nothing on any of the daemon's piece connections for PARENT_STALL_MS either (`heard`): a stopped
   * process; never the task's designated seed (ParentState.seed), whose silence is waited out. Silence
   * counts only while this process runs (a late tick is not the parent's). A busy parent is not hung:
   * while our answers wait behind its other children it sends a busy frame every
   * PIECE_BUSY_INTERVAL_MS (packages/transfer), which counts as a byte, and a host whose other flows
   * move is alive; the request's own timeout bounds the wait. The connection only counts bytes and
   * busy frames; this samples the counts.
   */
  private watchParents (): void {
    if (this.parentWatch != null) return
    this.lastWatch = Date.now()
    this.parentWatch = setInterval(() => {
      // a tick that comes late: this process did not run (a loaded machine), so the parents' silence
      // meanwhile is not theirs; and the verdicts wait for the I/O that piled up (setImmediate runs
      // after the poll phase, where the bytes that came meanwhile are counted)
      const late = Date.now() - this.lastWatch - PARENT_STALL_CHECK_MS
      this.lastWatch = Date.now()
      if (late > PARENT_STALL_CHECK_MS) for (const p of this.parents.values()) p.movedAt += late
      setImmediate(() => { this.checkParents() })
    }, PARENT_STALL_CHECK_MS)
    this.parentWatch.unref()
  }

  /** The stall check's verdicts (see watchParents). */
  private checkParents (): void {
    if (this.parentWatch == null) return
    if (this.state !== 'running') { this.unwatchParents(); return }
    const now = Date.now()
    let busy = false
    let changed = false
    for (const p of [...this.parents.values()]) {
      if (p.inflight.size === 0) continue
      busy = true
      // connecting is bounded on its own (the 5 s signal of PieceConnection.open)
      if (p.connecting != null || p.conn?.isOpen !== true) { p.movedAt = now; continue }
      const got = p.conn.received
      if (got !== p.seenBytes) {
        p.seenBytes = got; p.movedAt = now
        this.hear(p.id, now)
        if (p.silent) { p.silent = false; changed = true; this.reclaim(p) }
        const busy = p.conn.busy
        if (busy !== p.seenBusy) { p.seenBusy = busy; this.init.onBusy?.(p.id) }
        continue
      }
      if (now - p.movedAt < PARENT_STALL_MS) continue
      const heard = Math.max(p.movedAt, this.init.heard?.get(p.id) ?? -Infinity)
      if (now - heard >= PARENT_STALL_MS && !p.seed) {
        this.dropParent(p, new ParentTimeoutError(`parent ${p.id} sent no byte for ${now - p.movedAt} ms with ${p.inflight.size} pieces asked`))
        continue
      }
      if (!p.silent) {
        p.silent = true
        changed = true
        this.release(p)
        this.init.onSilent?.(p.id)
        this.log.debug(p.seed ? 'the seed is silent: waited for, its pieces asked of others meanwhile' : 'parent silent here while its host sends elsewhere: its pieces go to others', { parent: p.id, ms: now - p.movedAt, pieces: p.inflight.size })
      }
    }
    if (changed) this.pump()
    if (!busy) this.unwatchParents()
  }

  private unwatchParents (): void {
    clearInterval(this.parentWatch)
    this.parentWatch = undefined
  }

  /**
   * `digest`: the sha256 of `data` computed as it arrived, when the connection did; else it is hashed on the
   * thread pool here. `claimed`: the digest in the parent's frame, which counts only from the task's designated
   * seed (named by the scheduler, the connection bound to its PeerId): piece digests are the seed's word, the
   * scheduler relays them. A piece from the seed can come before the scheduler relayed its digest (fetchFromSeed).
   */
  private async accept (p: ParentState, n: number, data: Uint8Array, digest?: Uint8Array, claimed?: Uint8Array): Promise<void> {
    const s = this.stored!
    if (s.bitmap.has(n)) return
    const expected = this.digests[n] ?? (p.seed && claimed?.length === 32 ? claimed : undefined)
    if (expected == null) return
    // throws PieceDigestMismatchError -> parent blamed
    if (digest != null) checkPieceDigest(n, digest, expected)
    else await verifyPieceAsync(n, data, expected)
    // the task may have ended (failed, its store entry removed) while the piece was being checked
    if (this.ended(s)) return
    this.digests[n] ??= expected
    await s.writePiece(n, data, expected)
    if (this.ended(s)) return
    this.feedWhole(n, data)
    this.policy.onPiece(n, Date.now())
    p.bytes += data.byteLength
    this.piecesFromPeers++
    this.init.onStats?.('peer', data.byteLength)
    this.reportPiece(n)
    if (s.complete) this.succeedOrFail()
  }

  /** the task failed (its store entry gone) since `s` was its stored task */
  private ended (s: StoredTask): boolean { return this.stored !== s || this.state === 'failed' }

  /** succeed() from a piece's arrival: an error there fails the task instead of escaping as an unhandled rejection */
  private succeedOrFail (): void {
    this.succeed().catch(async (err: unknown) => { await this.fail(err as Error) })
  }

  private reportPiece (n: number): void {
    this.waiters.arrived(n)
    this.reportQueue.push(n)
    this.emit()
    if (this.reportTimer != null) return
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined
      const numbers = this.reportQueue.splice(0)
      if (numbers.length === 0) return
      const st = this.stored
      if (st == null) return // the task failed meanwhile: nothing of it is announced
      const digests = this.isSource ? numbers.map(i => st.digests[i]!) : undefined
      this.init.send({ pieceDone: { taskId: this.taskId, numbers, ...(digests != null ? { digests } : {}) } })
    }, REPORT_DELAY_MS)
  }

  /** Drop a parent; with a reason, blame it to the scheduler. */
  private dropParent (p: ParentState, reason?: Error): void {
    p.conn?.close(reason)
    this.parents.delete(p.id)
    if (reason != null) {
      this.blamed.add(p.id)
      this.init.onBlame?.(p.id, reason)
      this.log.warn('parent blamed', { parent: p.id, reason: reason.message })
      this.init.send({ badParent: { taskId: this.taskId, parent: p.id, reason: reason.message } })
    } else {
      this.init.send({ needParents: { taskId: this.taskId } })
    }
  }

  private armStarve (): void {
    if (this.starveTimer != null) return
    this.starveTimer = setTimeout(() => {
      this.starveTimer = undefined
      if (this.state !== 'running' || this.stored?.complete === true) return
      this.init.send({ needParents: { taskId: this.taskId } })
      this.pump()
    }, STARVE_MS)
    this.starveTimer.unref()
  }

  private disarmStarve (): void {
    if (this.starveTimer != null) { clearTimeout(this.starveTimer); this.starveTimer = undefined }
    if (this.state !== 'running') this.unwatchParents()
    if (this.stallTimer != null && this.state !== 'running') { clearTimeout(this.stallTimer); this.stallTimer = undefined }
    if (this.dueTimer != null && this.state !== 'running') { clearTimeout(this.dueTimer); this.dueTimer = undefined }
  }

  /** Fetch what is missing from the origin ourselves. */
  private goToSource (reason: string): void {
    if (this.sourcing != null || this.state !== 'running') return
    clearTimeout(this.waitTimer)
    this.log.info('back to source', { reason })
    this.state = 'back-to-source'
    this.isSource = true
    this.disarmStarve()
    const pinned = (this.init.request.version != null && this.init.request.version !== '') || this.init.request.digest != null
    if (this.lazy && pinned) { this.sourceLazily(); return }
    const r = this.init.request
    this.sourcing = (async () => {
      try {
        const task = await fillFromSource({
          store: this.init.store,
          taskId: this.taskId,
          ref: { url: r.url, headers: r.headers ?? {}, ...(r.digest != null ? { digest: r.digest } : {}) },
          meta: { url: r.url, ...(r.headers != null ? { headers: r.headers } : {}), ...(r.digest != null ? { digest: r.digest } : {}), ...(r.tag != null ? { tag: r.tag } : {}), ...this.idFields() },
          ...(this.stored != null ? { task: this.stored } : {}),
          digests: this.digests,
          timeoutMs: this.init.originTimeoutMs,
          onInfo: (info, t) => {
            this.stored = t
            this.waiters.layoutKnown()
            this.init.send({ sourceInfo: { taskId: this.taskId, info } })
            this.emit()
          },
          onPiece: (n, _digest, bytes) => {
            this.piecesFromSource++
            this.init.onStats?.('source', bytes)
            this.reportPiece(n)
          }
        })
        this.stored = task
        this.state = 'running'
        await this.succeed()
      } catch (err) {
        this.init.send({ result: { taskId: this.taskId, success: false, error: toErrorInfo(err) } })
        await this.fail(err as Error, false)
      }
    })()
  }

  /** Lazy and back to source: learn the layout (one-byte request) unless known, then fetch what reads want. */
  private sourceLazily (): void {
    this.state = 'running'
    if (this.stored != null) { this.pump(); return }
    const r = this.init.request
    this.sourcing = (async () => {
      try {
        const t = await openLazy({
          store: this.init.store,
          taskId: this.taskId,
          ref: { url: r.url, headers: r.headers ?? {}, ...(r.digest != null ? { digest: r.digest } : {}), ...(r.version != null && r.version !== '' ? { version: r.version } : {}) },
          meta: { url: r.url, ...(r.headers != null ? { headers: r.headers } : {}), ...(r.digest != null ? { digest: r.digest } : {}), ...(r.tag != null ? { tag: r.tag } : {}), ...this.idFields() },
          timeoutMs: this.init.originTimeoutMs,
          onInfo: (info, t) => {
            this.stored = t
            this.digests = new Array(info.pieceCount).fill(undefined)
            this.waiters.layoutKnown()
            this.init.send({ sourceInfo: { taskId: this.taskId, info } })
            this.emit()
          }
        })
        // empty content: nothing to read lazily, the whole (empty) task then
        if (t == null) { this.lazy = false; queueMicrotask(() => { this.goToSource('empty content') }); return }
        this.pump()
      } catch (err) {
        this.init.send({ result: { taskId: this.taskId, success: false, error: toErrorInfo(err) } })
        await this.fail(err as Error, false)
      } finally {
        this.sourcing = undefined
      }
    })()
  }

  private succeeding: Promise<void> | undefined
  /**
   * The whole content's sha256 (a task named by a digest), over pieces [0, wholeNext) in order, fed as
   * verified pieces are written: with the data in hand when a piece is the next one, else read back from
   * the store once the gap before it fills. At the end only what is left is read, so success does not
   * stall the event loop (and the children it serves) on one pass over the whole file.
   */
  private wholeHash: Hash | undefined
  private wholeNext = 0
  private wholeCatchUp: Promise<void> | undefined

  private feedWhole (n: number, data: Uint8Array): void {
    const s = this.stored
    if (this.init.request.digest == null || s == null || this.wholeNext < 0) return
    if (this.wholeCatchUp == null && n === this.wholeNext) {
      (this.wholeHash ??= createHash('sha256')).update(data)
      this.wholeNext++
    }
    if (this.wholeCatchUp == null && this.wholeNext < s.info.pieceCount && s.bitmap.has(this.wholeNext)) void this.catchUpWhole()
  }

  /** Feed the held pieces after wholeNext from the store, in order; a failed read gives up (succeed reads it all). */
  private async catchUpWhole (): Promise<void> {
    if (this.wholeCatchUp != null) { await this.wholeCatchUp; return }
    const s = this.stored!
    this.wholeCatchUp = (async () => {
      try {
        const h = this.wholeHash ??= createHash('sha256')
        while (this.wholeNext >= 0 && this.wholeNext < s.info.pieceCount && s.bitmap.has(this.wholeNext)) {
          const start = this.wholeNext * s.info.pieceLength
          h.update(await s.read(start, Math.min(s.info.pieceLength, s.info.contentLength - start)))
          this.wholeNext++
        }
      } catch {
        this.wholeNext = -1
      } finally {
        this.wholeCatchUp = undefined
      }
    })()
    await this.wholeCatchUp
  }

  /** sha256:HEX of the whole held content: the running hash when it covers every piece, else one pass over the store. */
  private async wholeDigest (): Promise<string> {
    const s = this.stored!
    await this.catchUpWhole()
    if (this.wholeNext === s.info.pieceCount && (this.wholeHash != null || s.info.pieceCount === 0)) {
      return `sha256:${(this.wholeHash ?? createHash('sha256')).digest('hex')}`
    }
    const h = createHash('sha256')
    const chunk = 4 * 1024 * 1024
    for (let off = 0; off < s.info.contentLength; off += chunk) h.update(await s.read(off, Math.min(chunk, s.info.contentLength - off)))
    return `sha256:${h.digest('hex')}`
  }
  private async succeed (): Promise<void> {
    this.succeeding ??= (async () => {
      const s = this.stored
      // a task that failed meanwhile (its store entry removed) does not succeed
      if (s == null || this.state === 'failed') return
      await s.flush()
      if (this.ended(s)) return
      const want = this.init.request.digest
      if (want != null) {
        if (await this.wholeDigest() !== want) {
          await this.init.store.remove(this.taskId).catch(() => {})
          this.stored = undefined
          await this.fail(new DigestMismatchError(`downloaded content does not match ${want}`))
          return
        }
      }
      this.state = 'succeeded'
      this.disarmStarve()
      clearTimeout(this.waitTimer)
      for (const p of this.parents.values()) p.conn?.close()
      this.parents.clear()
      const r = this.init.request
      this.init.send({ register: { taskId: this.taskId, url: r.url, ...(r.digest != null ? { digest: r.digest } : {}), ...(r.tag != null ? { tag: r.tag } : {}), ...this.idFields(), bitmap: s.bitmap.bytes, completed: true } })
      this.init.send({ result: { taskId: this.taskId, success: true } })
      this.log.info('task succeeded', { fromStore: this.piecesFromStore, fromPeers: this.piecesFromPeers, fromSource: this.piecesFromSource })
      this.emit()
      this.done.resolve()
    })()
    await this.succeeding
  }

  async fail (err: Error, report = true): Promise<void> {
    if (this.state === 'failed' || this.state === 'succeeded') return
    this.state = 'failed'
    this.error = err
    this.disarmStarve()
    clearTimeout(this.waitTimer)
    for (const p of this.parents.values()) p.conn?.close()
    this.parents.clear()
    if (report) this.init.send({ leave: { taskId: this.taskId } })
    // a failed download leaves nothing behind in the store: no half task to be served or resumed
    if (this.stored != null && !this.stored.complete) {
      this.stored = undefined
      await this.init.store.remove(this.taskId).catch(() => {})
    }
    this.log.warn('task failed', { err: err.message })
    this.waiters.failAll(err)
    this.emit()
    this.done.reject(err)
  }

  /** Stop downloading (daemon shutdown). */
  stop (): void {
    this.unwatchParents()
    this.disarmStarve()
    clearTimeout(this.stallTimer)
    clearTimeout(this.dueTimer)
    clearTimeout(this.waitTimer)
    clearTimeout(this.reportTimer)
    for (const p of this.parents.values()) p.conn?.close()
    this.waiters.failAll(new AbortError(`task ${this.taskId.slice(0, 12)} was stopped`))
  }
}

