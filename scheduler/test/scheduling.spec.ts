import { describe, it, expect } from 'vitest'
import { silentLogger, schedulerMessage, type SchedulerMessage, type WireHostInfo } from '@guoce/transfer'
import { Bitmap, taskIdFrom } from '@guoce/content'
import { SchedulerCore, CHAIN_MAX_PEERS, MAX_CYCLE_WALK, MAX_SCHEDULE_RETRIES, STALLED_PARENT_MS, STRIPE_COUNT, mayReach, reaches, type Host, type Peer, type Task } from '../src/index.js'

const URL = 'http://origin/big.bin'
const TASK = taskIdFrom({ url: URL })
const MiB = 1024 * 1024
const info = { contentLength: 64 * MiB, pieceLength: MiB, pieceCount: 64 }

function hostInfo (type: 'normal' | 'seed' = 'normal'): WireHostInfo {
  return { type, uploadSlots: 8, uploadBps: 0, idc: '', location: '', addrs: [], hostname: '', load: 0 }
}

/** A scheduler with a seed that holds the whole task and `n` peers registered in order p0, p1, ... */
/** `seedHolds`: the pieces the seed reported (all of them unless told: a seed still fetching holds fewer) */
function swarm (n: number, seedHolds?: number[]) {
  const core = new SchedulerCore(silentLogger, 0)
  const inbox = new Map<string, SchedulerMessage[]>()
  const hosts = new Map<string, Host>()
  const connect = (id: string, type: 'normal' | 'seed' = 'normal'): void => {
    inbox.set(id, [])
    hosts.set(id, core.connectHost(id, hostInfo(type), m => { inbox.get(id)!.push(m) }, { designated: type === 'seed' }))
  }
  const send = (id: string, msg: Parameters<SchedulerCore['handleMessage']>[1]): void => { core.handleMessage(hosts.get(id)!, msg) }
  const parents = (id: string): string[] | undefined => {
    const box = inbox.get(id)!
    for (let i = box.length - 1; i >= 0; i--) if (box[i]!.parents != null) return box[i]!.parents!.parents.map(p => p.peerId)
    return undefined
  }
  const got = (id: string, key: keyof SchedulerMessage): number => inbox.get(id)!.filter(m => m[key] != null).length
  /** the last parents message `id` got, as it arrives over the wire */
  const lastParents = (id: string): NonNullable<SchedulerMessage['parents']> | undefined => {
    const m = inbox.get(id)!.findLast(m => m.parents != null)
    return m == null ? undefined : schedulerMessage.decode(schedulerMessage.encode(m)).parents
  }
  connect('seed', 'seed')
  send('seed', { register: { taskId: TASK, url: URL } })
  send('seed', { sourceInfo: { taskId: TASK, info } })
  const all = Array.from({ length: info.pieceCount }, (_, i) => i)
  const held = seedHolds ?? all
  send('seed', { pieceDone: { taskId: TASK, numbers: held, digests: held.map(i => new Uint8Array(32).fill(i + 1)) } })
  const ids: string[] = []
  for (let i = 0; i < n; i++) { const id = `p${i}`; ids.push(id); connect(id); send(id, { register: { taskId: TASK, url: URL } }) }
  const task = (): Task => core.tasks.get(TASK)!
  const peer = (id: string): Peer => task().peers.get(id)!
  return { core, ids, send, parents, got, lastParents, task, peer }
}

describe('scheduling at scale', () => {
  it('keeps the join-order chain for 16 peers (bench/fanout, test/p2p.spec.ts)', () => {
    expect(CHAIN_MAX_PEERS).toBeGreaterThanOrEqual(16)
    const s = swarm(16)
    expect(s.task().forest).toBeUndefined()
    // every peer's primary is the peer that joined just before it; the seed feeds the head only
    s.ids.forEach((id, i) => { expect(s.parents(id)![0]).toBe(i === 0 ? 'seed' : s.ids[i - 1]) })
    for (const id of s.ids.slice(1)) expect(s.parents(id)).not.toContain('seed')
  })

  it('switches a larger swarm to striped trees of logarithmic depth, each forwarder within its places', () => {
    const n = 1000
    const s = swarm(n)
    const forest = s.task().forest!
    expect(forest).toBeDefined()
    expect(forest.stripes).toBe(STRIPE_COUNT)
    // seed -> heap of forwarders (log_k of N/k levels) -> leaf
    const bound = Math.ceil(Math.log(n / STRIPE_COUNT) / Math.log(STRIPE_COUNT)) + 2
    let deepest = 0
    for (const id of s.ids) {
      const p = s.peer(id)
      for (let k = 0; k < STRIPE_COUNT; k++) {
        const d = forest.depth(p, k)
        expect(d).toBeGreaterThan(0) // reaches the seed: the stripe is a tree, no cycle, no orphan
        deepest = Math.max(deepest, d)
      }
      expect(p.stripes!.kids.size).toBeLessThanOrEqual(STRIPE_COUNT)
      // the list starts with the stripe parents, in stripe order
      const up = p.stripes!.up.map(q => q!.id)
      expect(s.parents(id)!.slice(0, new Set(up).size)).toEqual([...new Set(up)])
    }
    expect(deepest).toBeLessThanOrEqual(bound)
    expect(deepest).toBeGreaterThan(2)
    // every peer forwards exactly one stripe and takes the others as a leaf: upload is shared by k children
    const forwarders = s.ids.filter(id => s.peer(id).stripes!.kids.size > 0).length
    expect(forwarders).toBeGreaterThan(n / STRIPE_COUNT - 2)
    for (const id of s.ids) expect(s.got(id, 'backToSource')).toBe(0)
  })

  it('names the stripe of each stripe parent in the parents message (stripe_count, stripes); 0 in a chain', () => {
    const chain = swarm(CHAIN_MAX_PEERS)
    for (const id of chain.ids) {
      const m = chain.lastParents(id)!
      expect(m.stripeCount ?? 0).toBe(0)
      expect(m.parents.length).toBeGreaterThan(0)
      for (const p of m.parents) expect(p.stripes ?? 0).toBe(0)
    }
    const s = swarm(CHAIN_MAX_PEERS + 40)
    expect(s.task().forest).toBeDefined()
    for (const id of s.ids) {
      const m = s.lastParents(id)!
      expect(m.stripeCount).toBe(STRIPE_COUNT)
      const up = s.peer(id).stripes!.up
      // every stripe has exactly one primary, and it is the forest's parent of that stripe
      for (let k = 0; k < STRIPE_COUNT; k++) {
        const owners = m.parents.filter(p => ((p.stripes ?? 0) & (1 << k)) !== 0)
        expect(owners.map(p => p.peerId)).toEqual([up[k]!.id])
      }
      // stripe parents first, in stripe order, then the backups (no stripe)
      const striped = m.parents.filter(p => (p.stripes ?? 0) !== 0)
      expect(m.parents.slice(0, striped.length)).toEqual(striped)
      expect(m.parents.slice(striped.length).every(p => (p.stripes ?? 0) === 0)).toBe(true)
    }
  })

  it('gives the children of a peer that leaves a large swarm new stripe parents, not the origin', () => {
    const s = swarm(200)
    const forest = s.task().forest!
    const gone = s.ids.find(id => s.peer(id).stripes!.kids.size === STRIPE_COUNT && s.peer(id).stripes!.index > 0)!
    const orphans = [...s.peer(gone).stripes!.kids].map(p => p.id)
    s.send(gone, { leave: { taskId: TASK } })
    for (const id of orphans) {
      expect(s.parents(id)).not.toContain(gone)
      for (let k = 0; k < STRIPE_COUNT; k++) expect(forest.depth(s.peer(id), k)).toBeGreaterThan(0)
      expect(s.got(id, 'backToSource')).toBe(0)
    }
  })

  it('never closes a cycle in the DAG under the bounded walk while peers complete and ask again', () => {
    const s = swarm(300)
    const full = new Bitmap(info.pieceCount); for (let i = 0; i < info.pieceCount; i++) full.set(i)
    // some peers complete (they may then feed peers that joined before them), everyone asks again
    for (let round = 0; round < 3; round++) {
      s.ids.forEach((id, i) => {
        if ((i * 7 + round) % 11 === 0) s.send(id, { pieceDone: { taskId: TASK, numbers: [...full.present()] } })
        s.send(id, { needParents: { taskId: TASK } })
      })
    }
    for (const p of s.task().peers.values()) {
      for (const parent of p.parents) {
        expect(reaches(p, parent)).toBe(false)
        expect(parent.level).toBeLessThan(p.level)
      }
    }
  })

  it('the bounded cycle walk refuses beyond its bound and answers exactly within it', () => {
    const s = swarm(MAX_CYCLE_WALK + 4)
    // a hand-made chain of DAG edges, longer than the walk may go
    const chain = s.ids.map(id => s.peer(id))
    for (const p of chain) for (const q of [...p.parents]) { p.parents.delete(q); q.children.delete(p) }
    for (let i = 1; i < chain.length; i++) { chain[i]!.parents.add(chain[i - 1]!); chain[i - 1]!.children.add(chain[i]!) }
    const head = chain[0]!; const tail = chain[chain.length - 1]!
    expect(reaches(head, tail)).toBe(true)
    expect(mayReach(head, chain[3]!)).toBe(true)
    expect(mayReach(head, tail)).toBe(true) // past the bound: refused, the safe answer
    expect(mayReach(chain[3]!, head)).toBe(false) // above the start: never a descendant
    expect(mayReach(tail, head)).toBe(false)
  })

  it('sends a child with no usable parent back to source only after MAX_SCHEDULE_RETRIES fruitless asks', () => {
    const s = swarm(3)
    // p2 blames every peer it could use
    for (const bad of ['seed', 'p0', 'p1']) s.send('p2', { badParent: { taskId: TASK, parent: bad, reason: 'digest' } })
    expect(s.parents('p2')).toEqual([])
    for (let i = 0; i < MAX_SCHEDULE_RETRIES; i++) s.send('p2', { needParents: { taskId: TASK } })
    expect(s.got('p2', 'backToSource')).toBe(0)
    // progress resets the budget
    s.send('p2', { pieceDone: { taskId: TASK, numbers: [0] } })
    for (let i = 0; i < MAX_SCHEDULE_RETRIES; i++) s.send('p2', { needParents: { taskId: TASK } })
    expect(s.got('p2', 'backToSource')).toBe(0)
    s.send('p2', { needParents: { taskId: TASK } })
    expect(s.got('p2', 'backToSource')).toBe(1)
  })
})

describe('back to source is the last resort', () => {
  it('keeps a starving child in the swarm while the seed can serve it, over the seed\'s slots; sends it to the origin once the seed is blamed or gone', () => {
    const s = swarm(3)
    // p2's parents are busy (nothing arrives) and the seed has no free upload slot
    s.peer('seed').host.info.uploadSlots = 1
    s.send('p2', { badParent: { taskId: TASK, parent: 'p0', reason: 'digest' } })
    s.send('p2', { badParent: { taskId: TASK, parent: 'p1', reason: 'digest' } })
    for (let i = 0; i < 3 * MAX_SCHEDULE_RETRIES; i++) s.send('p2', { needParents: { taskId: TASK } })
    expect(s.got('p2', 'backToSource')).toBe(0)
    // after MAX_SCHEDULE_RETRIES fruitless asks it gets the seed, whose slots are all taken
    expect(s.peer('seed').host.childCount).toBeGreaterThan(1)
    expect(s.parents('p2')).toEqual(['seed'])
    // named as the task's seed (a child waits out its silence), a normal parent is not
    expect(s.lastParents('p2')!.parents[0]!.seed).toBe(true)
    expect(s.lastParents('p1')!.parents.find(p => p.peerId === 'p0')?.seed).toBe(false)
    // the seed hung: blamed by two children, it can no longer serve anyone: the origin it is
    s.send('p1', { badParent: { taskId: TASK, parent: 'seed', reason: 'sent no byte for 3000 ms' } })
    s.send('p0', { badParent: { taskId: TASK, parent: 'seed', reason: 'sent no byte for 3000 ms' } })
    s.send('p2', { needParents: { taskId: TASK } })
    expect(s.got('p2', 'backToSource')).toBe(1)
    // a seed that left: the same
    const t = swarm(2)
    t.send('p1', { badParent: { taskId: TASK, parent: 'p0', reason: 'digest' } })
    t.send('seed', { leave: { taskId: TASK } })
    t.send('p0', { pieceDone: { taskId: TASK, numbers: Array.from({ length: info.pieceCount }, (_, i) => i) } })
    for (let i = 0; i <= MAX_SCHEDULE_RETRIES; i++) t.send('p1', { needParents: { taskId: TASK } })
    expect(t.got('p1', 'backToSource')).toBe(1)
  })
})

describe('a stalled parent', () => {
  it('is not offered again to a starving child that holds all it has; a parent still making progress is', () => {
    const s = swarm(2)
    const [p0, p1] = s.ids as [string, string]
    expect(s.parents(p1)).toEqual([p0])
    // p0 got pieces 0..4, and so did its child
    const five = [0, 1, 2, 3, 4]
    s.send(p0, { pieceDone: { taskId: TASK, numbers: five } })
    s.send(p1, { pieceDone: { taskId: TASK, numbers: five } })
    // p1 starves while p0 still makes progress: p0 stays its parent
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)).toEqual([p0])
    // p0 announces nothing new for STALLED_PARENT_MS, but its host still sends (other tasks): kept
    s.peer(p0).progressAt = Date.now() - STALLED_PARENT_MS
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)).toEqual([p0])
    // its host sends nothing at all for as long (a stopped process): the starving child gets the seed instead
    s.peer(p0).host.heardAt = Date.now() - STALLED_PARENT_MS
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)).toEqual(['seed'])
    // a stalled parent that still holds a piece the child lacks is kept
    const t = swarm(2)
    t.send(t.ids[0]!, { pieceDone: { taskId: TASK, numbers: five } })
    t.send(t.ids[1]!, { pieceDone: { taskId: TASK, numbers: [0, 1] } })
    t.peer(t.ids[0]!).progressAt = Date.now() - STALLED_PARENT_MS
    t.peer(t.ids[0]!).host.heardAt = Date.now() - STALLED_PARENT_MS
    t.send(t.ids[1]!, { needParents: { taskId: TASK } })
    expect(t.parents(t.ids[1]!)).toEqual([t.ids[0]])
  })

  it('a parent host that only keeps its scheduler stream alive cannot hold a starving child: after MAX_SCHEDULE_RETRIES asks the seed feeds it', () => {
    const s = swarm(2)
    const [p0, p1] = s.ids as [string, string]
    const five = [0, 1, 2, 3, 4]
    s.send(p0, { pieceDone: { taskId: TASK, numbers: five } })
    s.send(p1, { pieceDone: { taskId: TASK, numbers: five } })
    // p0 makes no progress but its host sends keep-alives: not refused as stalled
    s.peer(p0).progressAt = Date.now() - STALLED_PARENT_MS
    for (let i = 0; i < MAX_SCHEDULE_RETRIES - 1; i++) {
      s.send(p0, { keepalive: true })
      s.send(p1, { needParents: { taskId: TASK } })
      expect(s.parents(p1)![0]).toBe(p0)
    }
    s.send(p0, { keepalive: true })
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)![0]).toBe('seed')
    expect(s.got(p1, 'backToSource')).toBe(0)
  })

  it('is kept while the seed itself holds nothing more (a slow origin is what everyone waits for)', () => {
    const five = [0, 1, 2, 3, 4]
    // the seed has fetched pieces 0..4 so far; p0 and its child p1 hold them too
    const s = swarm(2, five)
    const [p0, p1] = s.ids as [string, string]
    s.send(p0, { pieceDone: { taskId: TASK, numbers: five } })
    s.send(p1, { pieceDone: { taskId: TASK, numbers: five } })
    s.peer(p0).progressAt = Date.now() - STALLED_PARENT_MS
    s.peer(p0).host.heardAt = Date.now() - STALLED_PARENT_MS
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)).toEqual([p0])
    // the seed gets piece 5, p0 does not: now p0 lags and the starving child gets the seed
    s.send('seed', { pieceDone: { taskId: TASK, numbers: [5], digests: [new Uint8Array(32).fill(6)] } })
    s.send(p1, { needParents: { taskId: TASK } })
    expect(s.parents(p1)).toEqual(['seed'])
  })
})
