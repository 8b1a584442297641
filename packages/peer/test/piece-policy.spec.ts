import { describe, it, expect } from 'vitest'
import { Bitmap } from '@guoce/content'
import { PiecePolicy, pickPieces, planWanted, type DownloadView, type ParentView } from '../src/peer-task.js'
import { ENDGAME_PIECES, MAX_STALL_MS, PARENT_INFLIGHT, READ_INFLIGHT, STALL_GAPS, STALL_MS, STRIPE_FILL_MS } from '../src/constants.js'

const PIECES = 64

interface FakeParent extends ParentView { bitmap: Bitmap | undefined, inflight: Set<number>, rank: number, stripes: number }

/** A download of PIECES pieces, every digest known, with parents that hold what `holds` says. */
function download (spec: Array<{ id: string, stripes?: number, holds?: (n: number) => boolean }>): {
  view: DownloadView<FakeParent>
  parents: Map<string, FakeParent>
  held: Bitmap
  /** one plan at `now`: pieces asked of each parent (and recorded as in flight) */
  plan: (policy: PiecePolicy, now: number) => { asked: Map<string, number[]>, heldBack: boolean, wakeAt: number | undefined }
  /** every request answered: the pieces arrive at `now` */
  deliver: (policy: PiecePolicy, now: number, only?: (n: number) => boolean) => void
} {
  const parents = new Map<string, FakeParent>()
  spec.forEach((p, rank) => {
    const bitmap = new Bitmap(PIECES)
    for (let n = 0; n < PIECES; n++) if (p.holds?.(n) ?? true) bitmap.set(n)
    parents.set(p.id, { id: p.id, bitmap, inflight: new Set(), rank, stripes: p.stripes ?? 0 })
  })
  const held = new Bitmap(PIECES)
  const requested = new Map<number, Set<string>>()
  const view: DownloadView<FakeParent> = { pieceCount: PIECES, held, known: () => true, requested, parents }
  const plan = (policy: PiecePolicy, now: number): { asked: Map<string, number[]>, heldBack: boolean, wakeAt: number | undefined } => {
    const asked = new Map<string, number[]>()
    const r = policy.plan(view, now, (p, numbers) => {
      for (const n of numbers) {
        p.inflight.add(n)
        let set = requested.get(n)
        if (set == null) requested.set(n, set = new Set())
        set.add(p.id)
      }
      asked.set(p.id, [...(asked.get(p.id) ?? []), ...numbers])
    })
    return { asked, heldBack: r.heldBack, wakeAt: r.wakeAt }
  }
  const deliver = (policy: PiecePolicy, now: number, only: (n: number) => boolean = () => true): void => {
    for (const p of parents.values()) {
      for (const n of [...p.inflight]) {
        if (!only(n)) continue
        p.inflight.delete(n)
        requested.delete(n)
        if (held.set(n)) policy.onPiece(n, now)
      }
    }
  }
  return { view, parents, held, plan, deliver }
}

const stripeOf = (n: number): number => n % 2
const asked = (m: Map<string, number[]>, id: string): number[] => m.get(id) ?? []

describe('PiecePolicy, chain mode (no stripes)', () => {
  it('asks only the primary until nothing arrived for STALL_MS, then the backups too', () => {
    const d = download([{ id: 'a' }, { id: 'b' }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 0, undefined, 0)
    let r = d.plan(policy, 0)
    expect([...r.asked.keys()]).toEqual(['a'])
    expect(asked(r.asked, 'a')).toHaveLength(PARENT_INFLIGHT)
    expect(r.heldBack).toBe(true) // the backups hold wanted pieces: no need to ask the scheduler
    expect(r.wakeAt).toBe(STALL_MS)
    r = d.plan(policy, STALL_MS - 1)
    expect(r.asked.size).toBe(0)
    r = d.plan(policy, STALL_MS)
    expect(asked(r.asked, 'b').length).toBeGreaterThan(0)
    expect(asked(r.asked, 'c').length).toBeGreaterThan(0)
  })

  it('waits longer for a primary whose pieces come at a slower pace (STALL_GAPS x the time between pieces, at most MAX_STALL_MS)', () => {
    const d = download([{ id: 'a' }, { id: 'b' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 0, undefined, 0)
    // the primary delivers one piece every 300 ms (a task sharing its link with others)
    let t = 0
    for (let i = 0; i < 12; i++) {
      const r = d.plan(policy, t)
      expect(asked(r.asked, 'b')).toEqual([])
      const [n] = [...d.parents.get('a')!.inflight]
      d.deliver(policy, t, m => m === n)
      t += 300
    }
    t -= 300
    expect(policy.stallMs()).toBe(STALL_GAPS * 300)
    // silent for longer than STALL_MS but within its pace's limit: backups still wait
    expect(asked(d.plan(policy, t + STALL_MS).asked, 'b')).toEqual([])
    expect(d.plan(policy, t + STALL_MS).wakeAt).toBe(t + STALL_GAPS * 300)
    expect(asked(d.plan(policy, t + STALL_GAPS * 300).asked, 'b').length).toBeGreaterThan(0)
    // a very slow pace is capped
    const slow = new PiecePolicy()
    for (let i = 0; i < 20; i++) slow.onPiece(i, i * 1900)
    expect(slow.stallMs()).toBe(MAX_STALL_MS)
  })

  it('ignores the stripe bits of a list without a stripe count', () => {
    const d = download([{ id: 'a', stripes: 1 }, { id: 'b', stripes: 2 }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 0, undefined, 0)
    const r = d.plan(policy, 0)
    expect([...r.asked.keys()]).toEqual(['a'])
    expect(asked(r.asked, 'a').some(n => stripeOf(n) === 1)).toBe(true)
  })
})

describe('PiecePolicy, striped mode', () => {
  it('sends each stripe to its primary only, backups get nothing while the stripes deliver', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10 }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    const r = d.plan(policy, 0)
    expect(asked(r.asked, 'a')).toHaveLength(PARENT_INFLIGHT)
    expect(asked(r.asked, 'a').every(n => stripeOf(n) === 0)).toBe(true)
    expect(asked(r.asked, 'b')).toHaveLength(PARENT_INFLIGHT)
    expect(asked(r.asked, 'b').every(n => stripeOf(n) === 1)).toBe(true)
    expect(asked(r.asked, 'c')).toEqual([])
    expect(r.heldBack).toBe(true)
    expect(r.wakeAt).toBe(2 * STALL_MS)
  })

  it('opens a stripe to every parent after k x STALL_MS without one of its pieces, and only that stripe', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10 }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    d.plan(policy, 0)
    // stripe 0 keeps arriving; stripe 1's primary sends nothing
    for (let t = 100; t < 2 * STALL_MS; t += 100) {
      d.deliver(policy, t, n => stripeOf(n) === 0)
      const r = d.plan(policy, t)
      expect(asked(r.asked, 'c')).toEqual([])
      expect(asked(r.asked, 'b')).toEqual([])
      expect(r.wakeAt).toBe(2 * STALL_MS)
    }
    expect(policy.stripeOpen(d.view, 1, 2 * STALL_MS - 1)).toBe(false)
    expect(policy.stripeOpen(d.view, 1, 2 * STALL_MS)).toBe(true)
    expect(policy.stripeOpen(d.view, 0, 2 * STALL_MS)).toBe(false)
    const r = d.plan(policy, 2 * STALL_MS)
    expect(asked(r.asked, 'c').length).toBeGreaterThan(0)
    expect(asked(r.asked, 'c').every(n => stripeOf(n) === 1)).toBe(true)
    // the primary of stripe 0 may now serve stripe 1 as well
    expect(asked(r.asked, 'a').some(n => stripeOf(n) === 1)).toBe(true)
  })

  it('waits STRIPE_FILL_MS for the first piece a primary can offer before backups serve its stripe', () => {
    // b, the primary of stripe 1, holds nothing yet (it is deep in the stripe's tree); c holds it all
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10, holds: () => false }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    let r = d.plan(policy, 0)
    expect(asked(r.asked, 'c')).toEqual([])
    expect(r.heldBack).toBe(true)
    expect(r.wakeAt).toBe(2 * STALL_MS) // stripe 0's primary offered: its stall limit comes first
    d.deliver(policy, STRIPE_FILL_MS - 1, n => stripeOf(n) === 0)
    r = d.plan(policy, STRIPE_FILL_MS - 1)
    expect(asked(r.asked, 'c')).toEqual([])
    expect(r.wakeAt).toBe(STRIPE_FILL_MS)
    r = d.plan(policy, STRIPE_FILL_MS)
    expect(asked(r.asked, 'c').length).toBeGreaterThan(0)
    expect(asked(r.asked, 'c').every(n => stripeOf(n) === 1)).toBe(true)
  })

  it('counts k x STALL_MS from the first piece the primary offers', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10, holds: () => false }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    d.plan(policy, 0)
    // at 1 s b gets its first pieces of stripe 1 (and the scheduler tells us)
    for (let n = 1; n < PIECES; n += 2) d.parents.get('b')!.bitmap!.set(n)
    d.deliver(policy, 1000, n => stripeOf(n) === 0)
    let r = d.plan(policy, 1000)
    expect(asked(r.asked, 'b').length).toBeGreaterThan(0)
    expect(asked(r.asked, 'c')).toEqual([])
    // b delivers nothing: the stripe opens k x STALL_MS later, well before STRIPE_FILL_MS
    expect(policy.stripeOpen(d.view, 1, 1000 + 2 * STALL_MS - 1)).toBe(false)
    expect(policy.stripeOpen(d.view, 1, 1000 + 2 * STALL_MS)).toBe(true)
    d.deliver(policy, 1000 + STALL_MS, n => stripeOf(n) === 0) // stripe 0 keeps arriving
    r = d.plan(policy, 1000 + 2 * STALL_MS)
    expect(asked(r.asked, 'c').every(n => stripeOf(n) === 1)).toBe(true)
    expect(asked(r.asked, 'c').length).toBeGreaterThan(0)
  })

  it('lets any parent serve a stripe that has no usable primary at once', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    expect(policy.stripeOpen(d.view, 1, 0)).toBe(true)
    const r = d.plan(policy, 0)
    expect(asked(r.asked, 'c').length).toBeGreaterThan(0)
    expect(asked(r.asked, 'c').every(n => stripeOf(n) === 1)).toBe(true)
    // a primary whose pieces are not known yet is not usable either
    const e = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10 }, { id: 'c' }])
    e.parents.get('b')!.bitmap = undefined
    policy.onParents(e.parents, 2, undefined, 0)
    expect(policy.stripeOpen(e.view, 1, 0)).toBe(true)
    expect(policy.stripeOpen(e.view, 0, 0)).toBe(false)
  })

  it('restarts a stripe\'s clock when its primary changes', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10 }, { id: 'c' }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    d.plan(policy, 0)
    // at 700 ms the scheduler names c the primary of stripe 1
    d.parents.get('b')!.stripes = 0
    d.parents.get('c')!.stripes = 0b10
    policy.onParents(d.parents, 2, undefined, 700)
    expect(policy.stripeOpen(d.view, 1, 2 * STALL_MS)).toBe(false)
    expect(policy.stripeOpen(d.view, 1, 700 + 2 * STALL_MS - 1)).toBe(false)
    expect(policy.stripeOpen(d.view, 1, 700 + 2 * STALL_MS)).toBe(true)
    // stripe 0 kept its primary: its clock runs on
    expect(policy.stripeOpen(d.view, 0, 2 * STALL_MS)).toBe(true)
  })

  it('opens every stripe in endgame', () => {
    const d = download([{ id: 'a', stripes: 0b01 }, { id: 'b', stripes: 0b10 }, { id: 'c' }])
    for (let n = 0; n < PIECES - ENDGAME_PIECES; n++) d.held.set(n)
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 2, undefined, 0)
    expect(policy.stripeOpen(d.view, 0, 0)).toBe(true)
    expect(policy.stripeOpen(d.view, 1, 0)).toBe(true)
    const r = d.plan(policy, 0)
    // every missing piece is asked of more than one parent
    const times = new Map<number, number>()
    for (const ns of r.asked.values()) for (const n of ns) times.set(n, (times.get(n) ?? 0) + 1)
    expect(times.size).toBe(ENDGAME_PIECES)
    expect([...times.values()].some(c => c > 1)).toBe(true)
  })
})

describe('pickPieces', () => {
  it('picks the rarest pieces the parent holds among those let through', () => {
    const d = download([{ id: 'a' }, { id: 'b', holds: n => n >= 32 }])
    const a = d.parents.get('a')!
    // pieces below 32 are held by a only: rarer
    const picks = pickPieces(d.view, a, 4, false, n => stripeOf(n) === 1)
    expect(picks).toHaveLength(4)
    expect(picks.every(n => n < 32 && stripeOf(n) === 1)).toBe(true)
    expect(pickPieces(d.view, a, 4, false, () => false)).toEqual([])
  })
})

describe('planWanted: what reads wait for goes first', () => {
  /** one planWanted: what each parent was asked, at which priority (recorded as in flight) */
  function want (d: ReturnType<typeof download>, wanted: Map<number, number>): Array<{ id: string, numbers: number[], priority: number }> {
    const out: Array<{ id: string, numbers: number[], priority: number }> = []
    planWanted(d.view, wanted, (p, numbers, priority) => {
      for (const n of numbers) {
        p.inflight.add(n)
        const set = d.view.requested.get(n) as Set<string> | undefined
        if (set == null) (d.view.requested as Map<number, Set<string>>).set(n, new Set([p.id])); else set.add(p.id)
      }
      out.push({ id: p.id, numbers, priority })
    })
    return out
  }

  it('asks for wanted pieces even when the primary is full of background requests, at their priority, most urgent first', () => {
    const d = download([{ id: 'a' }, { id: 'b', holds: n => n < 32 }])
    const policy = new PiecePolicy()
    policy.onParents(d.parents, 0, undefined, 0)
    d.plan(policy, 0)
    expect(d.parents.get('a')!.inflight.size).toBe(PARENT_INFLIGHT)
    const inflightBefore = new Set(d.view.requested.keys())
    const wanted = new Map<number, number>([[60, 1], [50, 0], [10, 0]])
    for (const n of inflightBefore) wanted.set(n, 0) // already in flight: left where it is
    const asked = want(d, wanted)
    // 10 goes to b (idle, holds it), 50 and 60 only a holds; on-demand (0) before prefetch (1)
    expect(asked).toEqual([{ id: 'b', numbers: [10], priority: 0 }, { id: 'a', numbers: [50], priority: 0 }, { id: 'a', numbers: [60], priority: 1 }])
    // pure: nothing asked twice
    expect(want(d, wanted)).toEqual([])
  })

  it('skips pieces held, unknown or outside the task, and stops at PARENT_INFLIGHT + READ_INFLIGHT per parent', () => {
    const d = download([{ id: 'a' }])
    d.held.set(3)
    const wanted = new Map<number, number>([[3, 0], [-1, 0], [PIECES, 0]])
    for (let n = 10; n < 40; n++) wanted.set(n, 0)
    const asked = want(d, wanted)
    const numbers = asked.flatMap(a => a.numbers)
    expect(numbers).toEqual(Array.from({ length: PARENT_INFLIGHT + READ_INFLIGHT }, (_, i) => 10 + i))
  })
})
