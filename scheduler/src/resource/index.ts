/*
 * Soft state only: everything here is rebuilt from the hosts' (re-)registrations after a restart.
 * A Host owns its channel; a Task owns its Peers; Peer.parents/children are the DAG edges.
 */
import { Bitmap } from '@guoce/content'
import type { SchedulerMessage, WireHostInfo, WireTaskRef } from '@guoce/transfer'
import type { PeerState, TaskInfo } from '@guoce/interface'
import { locationElements } from '../evaluator/index.js'
import type { Forest, StripeSlot } from '../scheduling/forest.js'

export class Host {
  readonly peers = new Map<string, Peer>()
  /** children fed over all tasks, kept by the peers' ChildSets (read with `childCount`) */
  children = 0
  /** when the host last sent a message (any task, keep-alives too): a stopped host sends none */
  heardAt = Date.now()
  /** refused messages so far (HOST_OFFENCE_LIMIT) */
  offences = 0
  /** registers in the current one-minute window, and when that window began (MAX_REGISTERS_PER_MINUTE) */
  registers = 0
  registerWindow = 0
  /** tasks this host was first to register, needing the origin, in the same window (MAX_NEW_TASKS_PER_MINUTE) */
  newTasks = 0
  /** bytes of `Peer.rawBitmap` this host's peers hold (MAX_HOST_PENDING_BITMAP_BYTES) */
  pendingBitmapBytes = 0
  /**
   * `sink` delivers a message to the host (its stream, or a simulator). `designated`: the host proved
   * it holds the seed key (Hello.seed_proof), decided by the network layer; only such a host is a seed.
   */
  constructor (readonly id: string, public info: WireHostInfo, private readonly sink: (msg: SchedulerMessage) => void, readonly close: () => void = () => {}, readonly designated = false) {}
  private locationLabel: string | undefined
  private locationCache: readonly string[] = []
  /** a designated seed: gets seed orders; its layouts, digests and failures count for everyone */
  get isSeed (): boolean { return this.designated }
  /** the location label split into its elements, once per label (the evaluator compares them) */
  get location (): readonly string[] {
    const label = this.info.location ?? ''
    if (label !== this.locationLabel) { this.locationLabel = label; this.locationCache = locationElements(label) }
    return this.locationCache
  }
  get uploadSlots (): number { return this.info.uploadSlots }
  /** children this host currently feeds, over all tasks */
  get childCount (): number { return this.children }

  send (msg: SchedulerMessage): void { this.sink(msg) }
}

/**
 * A peer's children. Keeps its host's child total current, so slot checks are O(1), and keeps
 * `level` a topological order of the DAG: every edge goes from a lower to a higher level, so a
 * candidate at a level <= the child's can never be the child's descendant (no walk needed).
 */
class ChildSet extends Set<Peer> {
  constructor (private readonly owner: Peer) { super() }
  override add (p: Peer): this {
    if (this.has(p)) return this
    super.add(p)
    this.owner.host.children++
    if (p.level <= this.owner.level) raiseLevel(p, this.owner.level + 1)
    return this
  }

  override delete (p: Peer): boolean {
    if (!super.delete(p)) return false
    this.owner.host.children--
    return true
  }

  override clear (): void {
    this.owner.host.children -= this.size
    super.clear()
  }
}

function raiseLevel (start: Peer, level: number): void {
  start.level = level
  const stack = [start]
  while (stack.length > 0) {
    const p = stack.pop()!
    for (const c of p.children) {
      if (c.level <= p.level) { c.level = p.level + 1; stack.push(c) }
    }
  }
}

export class Peer {
  bitmap: Bitmap | undefined
  state: PeerState = 'pending'
  readonly parents = new Set<Peer>()
  readonly children: Set<Peer>
  /** topological level in the task's DAG: a parent's level is always below its children's */
  level = 0
  /** parents this child reported as bad */
  readonly blamed = new Set<string>()
  /** children that reported this peer */
  readonly reportedBy = new Set<string>()
  /** may announce task info and piece digests */
  isSource = false
  scheduleRetries = 0
  /** bitmap sent before the task's layout was known (a re-registration after a scheduler restart) */
  rawBitmap: Uint8Array | undefined
  /** place in the task's forest (large swarms, scheduling/forest.ts); its stripe edges are not in parents/children */
  stripes: StripeSlot | undefined
  /** when this peer last announced a piece it did not have (or joined) */
  progressAt = Date.now()
  /** the child asked for parents because none of its parents has a piece it lacks; a fresh piece clears it */
  starving = false
  /** registered for ranged reads (register.lazy): random access, so the seed is always among its parents */
  lazy = false

  constructor (readonly host: Host, readonly task: Task) { this.children = new ChildSet(this) }
  get id (): string { return this.host.id }
  get bad (): boolean { return this.reportedBy.size >= 2 }
}

/**
 * A task's peers by host id (Map order = join order, which scheduling/ relies on), also kept in a
 * join-ordered array so a scheduler can look at the peers that joined just before or after a child
 * (`before`, `after`, `first`) in O(limit) instead of walking every peer of a 10,000-peer task.
 * A peer that goes leaves a hole; holes are compacted away once they are half the array.
 */
export class PeerMap extends Map<string, Peer> {
  private joined: Array<Peer | undefined> = []
  private readonly pos = new Map<Peer, number>()
  private holes = 0

  override set (id: string, p: Peer): this {
    const old = super.get(id)
    if (old === p) return this
    if (old != null) this.unlist(old)
    super.set(id, p)
    this.pos.set(p, this.joined.length)
    this.joined.push(p)
    return this
  }

  override delete (id: string): boolean {
    const p = super.get(id)
    if (p == null) return false
    this.unlist(p)
    return super.delete(id)
  }

  override clear (): void {
    this.joined = []
    this.pos.clear()
    this.holes = 0
    super.clear()
  }

  /** Position in join order (larger = joined later); -1 when not here. */
  order (p: Peer): number { return this.pos.get(p) ?? -1 }

  /** Up to `limit` peers that joined before `p`, nearest first. */
  * before (p: Peer, limit: number): Generator<Peer> {
    let i = this.order(p) - 1; let n = 0
    for (; i >= 0 && n < limit; i--) { const q = this.joined[i]; if (q != null) { n++; yield q } }
  }

  /** Up to `limit` peers that joined after `p`, nearest first. */
  * after (p: Peer, limit: number): Generator<Peer> {
    const at = this.order(p)
    if (at < 0) return
    let n = 0
    for (let i = at + 1; i < this.joined.length && n < limit; i++) { const q = this.joined[i]; if (q != null) { n++; yield q } }
  }

  /** The first `limit` peers to join (seeds usually). */
  * first (limit: number): Generator<Peer> {
    let n = 0
    for (let i = 0; i < this.joined.length && n < limit; i++) { const q = this.joined[i]; if (q != null) { n++; yield q } }
  }

  private unlist (p: Peer): void {
    const i = this.pos.get(p)
    if (i == null) return
    this.joined[i] = undefined
    this.pos.delete(p)
    if (++this.holes > 64 && this.holes * 2 > this.joined.length) {
      this.joined = this.joined.filter(q => q != null)
      this.joined.forEach((q, k) => this.pos.set(q!, k))
      this.holes = 0
    }
  }
}

export class Task {
  info: TaskInfo | undefined
  digests: Array<Uint8Array | undefined> = []
  readonly peers = new PeerMap()
  /** striped trees of a large swarm (scheduling/forest.ts); undefined while the task is a chain */
  forest: Forest | undefined
  /** host asked to seed this task, while it runs */
  seeding: string | undefined
  /** imported content: the holder whose layout and piece digests stand for the task (no origin, no seed) */
  vouchedBy: string | undefined
  /** every peer so far only reads ranges (register.lazy): the seed fetches only what is wanted */
  lazy = true
  /** source attempts that failed with a retryable error */
  sourceFailures = 0
  /** cached `covered`: once true it stays true until a peer goes (`peerGone`) */
  private coveredCache = false

  constructor (readonly id: string, public ref: WireTaskRef) {}

  setInfo (info: TaskInfo): void {
    this.info = info
    this.digests = new Array(info.pieceCount).fill(undefined)
    for (const p of this.peers.values()) {
      if (p.bitmap == null || p.bitmap.size !== info.pieceCount) p.bitmap = new Bitmap(info.pieceCount, p.rawBitmap != null && p.rawBitmap.length === Math.ceil(info.pieceCount / 8) ? p.rawBitmap : undefined)
      if (p.rawBitmap != null) p.host.pendingBitmapBytes -= p.rawBitmap.byteLength
      p.rawBitmap = undefined
    }
  }

  /** true when the peers still here hold every piece between them */
  get covered (): boolean {
    if (this.info == null) return false
    if (this.coveredCache) return true
    const union = new Bitmap(this.info.pieceCount)
    for (const p of this.peers.values()) {
      if (p.bitmap == null || p.state === 'failed' || p.state === 'left') continue
      for (let i = 0; i < union.bytes.length; i++) union.bytes[i] = (union.bytes[i] ?? 0) | (p.bitmap.bytes[i] ?? 0)
    }
    this.coveredCache = new Bitmap(this.info.pieceCount, union.bytes).full
    return this.coveredCache
  }

  /**
   * `gone` left, failed, was removed or re-registered (maybe with less): coverage holds on only if every
   * piece it held has another live holder. The search stops at the first holder (usually the seed, first
   * in join order), so this is about O(pieces), not O(peers x pieces).
   */
  peerGone (gone?: Peer): void {
    if (!this.coveredCache) return
    const bm = gone?.bitmap
    if (bm == null || this.info == null || bm.size !== this.info.pieceCount) { this.coveredCache = false; return }
    const others: Peer[] = []
    for (const p of this.peers.values()) {
      if (p === gone || p.bitmap == null || p.state === 'failed' || p.state === 'left') continue
      if (p.bitmap.full) return // one complete peer settles every piece
      others.push(p)
    }
    for (let n = 0; n < bm.size; n++) {
      if (!bm.has(n)) continue
      if (!others.some(p => p.bitmap!.has(n))) { this.coveredCache = false; return }
    }
  }
}
