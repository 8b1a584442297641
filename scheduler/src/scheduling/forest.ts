/**
 * Striped trees for large swarms (SplitStream's layout with the bounded depth Kraken asks of its
 * pipelines). DEV DOCS:
 *
 * A chain (scheduling/index.ts) moves every byte across each link once, but its last peer waits one
 * piece time per hop: 1,000 peers x 1 MiB at 100 Mbit/s is 84 s of pipeline delay on a 11 s download.
 * A task with more than CHAIN_MAX_PEERS peers therefore gets a forest instead:
 *
 * - Piece n belongs to stripe n mod k (k = STRIPE_COUNT). Peers entering the forest are dealt to the
 *   stripe with the fewest live forwarders; a peer *forwards* that stripe and is a *leaf* of every other.
 * - The forwarders of stripe s form a k-ary heap in the order they entered: forwarder i takes stripe s
 *   from forwarder floor((i-1)/k), forwarder 0 from the task's source (the seed). Depth: log_k(N/k) + 2.
 *   A peer that goes leaves a hole, which the next forwarder of the stripe takes (depth stays bounded
 *   under churn); its children take new parents.
 * - A leaf of stripe s takes it from the newest forwarder of s with fewer than k children of the stripe
 *   (the newest forwarders are the last to need their places for the heap). When a forwarder's heap
 *   child arrives and the forwarder is full, its newest leaf moves to another forwarder (`place` returns
 *   it: it needs a new parent list).
 * - So each peer uploads its stripe to at most k children at U/k each (U in all), receives k stripes at
 *   U/k each (U in all), and every byte crosses each link once, as in the chain, with depth O(log N).
 * - Each stripe is a tree rooted at the source (heap edges go from smaller to larger heap places, leaves
 *   have no children in that stripe), so no stripe carries a cycle. Across stripes two peers may feed
 *   each other different stripes, so these edges are kept out of the parent/child DAG of resource/
 *   (Peer.parents/children and levels), which keeps only the backup edges.
 *
 * Ownership: the Forest owns every StripeSlot (Peer.stripes) of its task and the source's stripe
 * children; the scheduler asks it to `place` a child and to `remove` a peer, and re-sends parents to the
 * peers either call returns.
 */
import { STRIPE_COUNT, STRIPE_LEAF_SCAN } from '../constants.js'
import type { Peer } from '../resource/index.js'

/** A peer's place in its task's forest (Peer.stripes). */
export interface StripeSlot {
  /** the stripe this peer forwards */
  readonly stripe: number
  /** its place in that stripe's heap of forwarders */
  readonly index: number
  /** its parent for each stripe (undefined: none found yet) */
  readonly up: Array<Peer | undefined>
  /** its children in its own stripe (at most k unless no forwarder has room) */
  readonly kids: Set<Peer>
}

/** May `child` take `parent` as a stripe parent? (not gone, not blamed) */
export type Usable = (child: Peer, parent: Peer) => boolean

export class Forest {
  /** forwarders of each stripe in heap order; a peer that went leaves a hole */
  private readonly heaps: Array<Array<Peer | undefined>>
  /** the source's children per stripe: the forwarder at the top of each heap, leaves while a heap is empty */
  private readonly rootKids: Array<Set<Peer>>
  /** forwarders of each stripe with fewer than k children (looked at when the newest are all full) */
  private readonly roomy: Array<Set<Peer>>
  /** peers over their places in a stripe (k children; 1 for the source) */
  private readonly crowded: Array<Set<Peer>>
  /** places left in each heap by peers that went, taken again by the next forwarders of the stripe */
  private readonly holes: number[][]
  /** live forwarders per stripe: a newcomer forwards the stripe with the fewest */
  private readonly live: number[]
  private root: Peer | undefined
  private entered = 0

  constructor (readonly stripes = STRIPE_COUNT) {
    this.heaps = Array.from({ length: stripes }, () => [])
    this.rootKids = Array.from({ length: stripes }, () => new Set())
    this.roomy = Array.from({ length: stripes }, () => new Set())
    this.crowded = Array.from({ length: stripes }, () => new Set())
    this.holes = Array.from({ length: stripes }, () => [])
    this.live = new Array<number>(stripes).fill(0)
  }

  /** the peer at the top of every stripe (the task's source) */
  get source (): Peer | undefined { return this.root }

  /**
   * Give `child` a parent for every stripe, keeping those it has that are still usable; `root` is the
   * task's source. Returns the other peers whose stripe parents changed (they need a new parent list).
   */
  place (child: Peer, root: Peer | undefined, usable: Usable): Peer[] {
    const moved = root !== this.root ? this.setRoot(root) : []
    let slot = child.stripes
    if (slot == null) {
      slot = this.enter(child)
    }
    for (let s = 0; s < this.stripes; s++) {
      const cur = slot.up[s]
      if (cur != null && usable(child, cur)) continue
      if (cur != null) this.detach(cur, child, s)
      if (s === slot.stripe) {
        const p = this.heapParent(child, slot, usable)
        if (p == null) continue
        this.attach(p, child, s)
        moved.push(...this.shed(p, s, usable))
      } else {
        const p = this.leafParent(s, child, usable)
        if (p != null) this.attach(p, child, s)
      }
    }
    // a new forwarder has room: peers placed over a full stripe move to it
    if (this.crowded[slot.stripe]!.size > 0) moved.push(...this.relieve(slot.stripe, usable))
    return moved
  }

  /** A newcomer forwards the stripe with the fewest live forwarders, at the highest free place of its heap. */
  private enter (child: Peer): StripeSlot {
    let stripe = this.entered++ % this.stripes
    for (let s = 0; s < this.stripes; s++) if (this.live[s]! < this.live[stripe]!) stripe = s
    const heap = this.heaps[stripe]!
    const holes = this.holes[stripe]!
    let index = heap.length
    if (holes.length > 0) {
      let at = 0
      holes.forEach((h, i) => { if (h < holes[at]!) at = i })
      index = holes[at]!
      holes.splice(at, 1)
    }
    const slot: StripeSlot = { stripe, index, up: new Array<Peer | undefined>(this.stripes).fill(undefined), kids: new Set() }
    heap[index] = child
    this.live[stripe]!++
    child.stripes = slot
    this.recount(child, stripe)
    return slot
  }

  /** `peer` left or failed: returns the peers that lost a stripe parent (they need a new parent list). */
  remove (peer: Peer): Peer[] {
    const moved: Peer[] = []
    if (peer === this.root) moved.push(...this.setRoot(undefined))
    const slot = peer.stripes
    if (slot == null) return moved
    slot.up.forEach((p, s) => { if (p != null) this.detach(p, peer, s) })
    for (const c of slot.kids) { c.stripes!.up[slot.stripe] = undefined; moved.push(c) }
    slot.kids.clear()
    this.roomy[slot.stripe]!.delete(peer)
    this.crowded[slot.stripe]!.delete(peer)
    this.heaps[slot.stripe]![slot.index] = undefined
    this.holes[slot.stripe]!.push(slot.index)
    this.live[slot.stripe]!--
    peer.stripes = undefined
    return moved
  }

  /** Every peer `p` feeds a stripe to (for `have` announcements). */
  * children (p: Peer): Generator<Peer> {
    if (p === this.root) for (const set of this.rootKids) yield * set
    else if (p.stripes != null) yield * p.stripes.kids
  }

  /** Depth of `p` in stripe `s` (1 = fed by the source), or -1 when it has no way up to the source. */
  depth (p: Peer, s: number): number {
    let d = 0
    for (let q: Peer | undefined = p; q !== this.root; q = q.stripes?.up[s]) {
      if (q == null || ++d > this.entered + 1) return -1
    }
    return d
  }

  private setRoot (root: Peer | undefined): Peer[] {
    const moved: Peer[] = []
    this.rootKids.forEach((set, s) => {
      for (const c of set) { c.stripes!.up[s] = undefined; moved.push(c) }
      set.clear()
      if (this.root != null) this.crowded[s]!.delete(this.root)
    })
    this.root = root
    return moved
  }

  private kidsOf (p: Peer, s: number): Set<Peer> | undefined {
    if (p === this.root) return this.rootKids[s]
    return p.stripes?.stripe === s ? p.stripes.kids : undefined
  }

  private attach (p: Peer, c: Peer, s: number): void {
    this.kidsOf(p, s)?.add(c)
    c.stripes!.up[s] = p
    this.recount(p, s)
  }

  private detach (p: Peer, c: Peer, s: number): void {
    this.kidsOf(p, s)?.delete(c)
    c.stripes!.up[s] = undefined
    this.recount(p, s)
  }

  /** keep `roomy` and `crowded` current for `p` in stripe `s` */
  private recount (p: Peer, s: number): void {
    const n = this.kidsOf(p, s)?.size ?? 0
    const cap = p === this.root ? 1 : this.stripes
    if (n > cap) this.crowded[s]!.add(p)
    else this.crowded[s]!.delete(p)
    if (p === this.root) return
    if (n < cap) this.roomy[s]!.add(p)
    else this.roomy[s]!.delete(p)
  }

  /** The nearest usable heap ancestor of a forwarder, else the source. */
  private heapParent (child: Peer, slot: StripeSlot, usable: Usable): Peer | undefined {
    const heap = this.heaps[slot.stripe]!
    for (let i = slot.index; i > 0;) {
      i = Math.floor((i - 1) / this.stripes)
      const q = heap[i]
      if (q != null && usable(child, q)) return q
    }
    return this.root != null && usable(child, this.root) ? this.root : undefined
  }

  /**
   * The newest forwarder of stripe `s` with room, else the least loaded of the newest (a place over k
   * children, until a new forwarder of the stripe takes it over: `relieve`), else the source.
   */
  private leafParent (s: number, child: Peer, usable: Usable, not?: Peer): Peer | undefined {
    const room = this.withRoom(s, child, usable, not)
    if (room != null) return room
    const heap = this.heaps[s]!
    let best: Peer | undefined
    let looked = 0
    for (let i = heap.length - 1; i >= 0 && looked < STRIPE_LEAF_SCAN; i--) {
      const q = heap[i]
      if (q == null || q === child || q === not || !usable(child, q)) continue
      looked++
      if (best == null || q.stripes!.kids.size < best.stripes!.kids.size) best = q
    }
    if (best != null) return best
    return this.root != null && this.root !== not && usable(child, this.root) ? this.root : undefined
  }

  /** The newest forwarder of stripe `s` with fewer than k children that `child` may take. */
  private withRoom (s: number, child: Peer, usable: Usable, not?: Peer): Peer | undefined {
    const heap = this.heaps[s]!
    for (let i = heap.length - 1, looked = 0; i >= 0 && looked < STRIPE_LEAF_SCAN; i--) {
      const q = heap[i]
      if (q == null || q === child || q === not) continue
      looked++
      if (q.stripes!.kids.size < this.stripes && usable(child, q)) return q
    }
    // the newest are full: the newest forwarder with room anywhere in the heap
    let room: Peer | undefined
    for (const q of this.roomy[s]!) {
      if (q !== child && q !== not && usable(child, q) && (room == null || q.stripes!.index > room.stripes!.index)) room = q
    }
    return room
  }

  /** Leaves of forwarders over k children (or of the source) move to forwarders with room. */
  private relieve (s: number, usable: Usable): Peer[] {
    const moved: Peer[] = []
    for (const p of [...this.crowded[s]!]) {
      const cap = p === this.root ? 1 : this.stripes
      const kids = this.kidsOf(p, s)
      while (kids != null && kids.size > cap) {
        let leaf: Peer | undefined
        for (const c of kids) if (c.stripes!.stripe !== s) leaf = c
        const q = leaf != null ? this.withRoom(s, leaf, usable, p) : undefined
        if (leaf == null || q == null) break
        this.detach(p, leaf, s)
        this.attach(q, leaf, s)
        moved.push(leaf)
      }
    }
    return moved
  }

  /** `p` took a forwarder of stripe `s`: if that leaves it over its places, its newest leaves move on. */
  private shed (p: Peer, s: number, usable: Usable): Peer[] {
    const kids = this.kidsOf(p, s)
    const cap = p === this.root ? 1 : this.stripes
    const moved: Peer[] = []
    while (kids != null && kids.size > cap) {
      let leaf: Peer | undefined
      for (const c of kids) if (c.stripes!.stripe !== s) leaf = c
      if (leaf == null) break
      this.detach(p, leaf, s)
      const q = this.leafParent(s, leaf, usable, p)
      if (q != null) this.attach(q, leaf, s)
      moved.push(leaf)
    }
    return moved
  }
}
