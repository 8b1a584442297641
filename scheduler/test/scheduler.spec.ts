import { describe, it, expect } from 'vitest'
import { silentLogger, type SchedulerMessage, type WireHostInfo } from '@guoce/transfer'
import { Bitmap, taskIdFrom } from '@guoce/content'
import { SchedulerCore, evaluate, locationAffinity, reaches, type Host } from '../src/index.js'

const URL = 'http://origin/f.bin'
const TASK = taskIdFrom({ url: URL })
const MiB = 1024 * 1024

function hostInfo (type: 'normal' | 'seed' = 'normal', extra: Partial<WireHostInfo> = {}): WireHostInfo {
  return { type, uploadSlots: 8, uploadBps: 0, idc: '', location: '', addrs: [], hostname: '', load: 0, ...extra }
}

function harness () {
  const core = new SchedulerCore(silentLogger, 0)
  const inbox = new Map<string, SchedulerMessage[]>()
  const hosts = new Map<string, Host>()
  const connect = (id: string, info = hostInfo()): Host => {
    inbox.set(id, [])
    const h = core.connectHost(id, info, m => { inbox.get(id)!.push(m) }, { designated: info.type === 'seed' })
    hosts.set(id, h)
    return h
  }
  const send = (id: string, msg: Parameters<SchedulerCore['handleMessage']>[1]): void => { core.handleMessage(hosts.get(id)!, msg) }
  const last = <K extends keyof SchedulerMessage>(id: string, key: K): SchedulerMessage[K] | undefined => {
    const box = inbox.get(id)!
    for (let i = box.length - 1; i >= 0; i--) if (box[i]![key] != null) return box[i]![key]
    return undefined
  }
  return { core, inbox, connect, send, last }
}

const info = { contentLength: 10 * MiB, pieceLength: MiB, pieceCount: 10 }
const digest = (n: number): Uint8Array => new Uint8Array(32).fill(n + 1)

describe('scheduler', () => {
  it('orders the seed, relays its layout and digests, and hands out parents', () => {
    const h = harness()
    h.connect('seed', hostInfo('seed'))
    h.connect('p1')
    h.send('p1', { register: { taskId: TASK, url: URL } })
    expect(h.last('seed', 'seed')?.taskId).toBe(TASK)
    h.send('seed', { register: { taskId: TASK, url: URL } })
    h.send('seed', { sourceInfo: { taskId: TASK, info } })
    expect(h.last('p1', 'taskInfo')?.info.pieceCount).toBe(10)
    expect(h.last('p1', 'parents')?.parents.map(p => p.peerId)).toEqual(['seed'])
    h.send('seed', { pieceDone: { taskId: TASK, numbers: [0, 1], digests: [digest(0), digest(1)] } })
    h.core.flushAnnouncements()
    const d = h.last('p1', 'digests')!
    expect(d.numbers).toEqual([0, 1])
    expect(Buffer.from(d.digests[1]!)).toEqual(Buffer.from(digest(1)))
    expect(h.last('p1', 'have')).toMatchObject({ peerId: 'seed', numbers: [0, 1] })
  })

  it('ignores layout and digests from a peer that is not a source', () => {
    const h = harness()
    h.connect('seed', hostInfo('seed'))
    h.connect('liar')
    h.connect('p1')
    h.send('liar', { register: { taskId: TASK, url: URL } })
    h.send('liar', { sourceInfo: { taskId: TASK, info: { ...info, contentLength: 1 } } })
    h.send('p1', { register: { taskId: TASK, url: URL } })
    expect(h.last('p1', 'taskInfo')).toBeUndefined()
    h.send('seed', { register: { taskId: TASK, url: URL } })
    h.send('seed', { sourceInfo: { taskId: TASK, info } })
    h.send('liar', { pieceDone: { taskId: TASK, numbers: [0], digests: [digest(9)] } })
    h.core.flushAnnouncements()
    expect(h.last('p1', 'taskInfo')?.info.contentLength).toBe(info.contentLength)
    expect(h.last('p1', 'digests')).toBeUndefined()
  })

  it('never closes a cycle in the parent DAG', () => {
    const h = harness()
    h.connect('seed', hostInfo('seed'))
    const ids = ['p1', 'p2', 'p3', 'p4', 'p5']
    for (const id of ids) h.connect(id)
    for (const id of ids) h.send(id, { register: { taskId: TASK, url: URL } })
    h.send('seed', { register: { taskId: TASK, url: URL } })
    h.send('seed', { sourceInfo: { taskId: TASK, info } })
    // ask for parents repeatedly, in every order
    for (let round = 0; round < 5; round++) for (const id of [...ids].reverse()) h.send(id, { needParents: { taskId: TASK } })
    const task = h.core.tasks.get(TASK)!
    let peerEdges = 0
    for (const p of task.peers.values()) for (const parent of p.parents) if (parent.id !== 'seed') peerEdges++
    expect(peerEdges).toBeGreaterThan(ids.length)
    for (const p of task.peers.values()) {
      for (const parent of p.parents) expect(reaches(p, parent)).toBe(false)
      expect(p.parents.has(p)).toBe(false)
    }
  })

  it('stops offering a parent its child blamed, and one that several children blamed', () => {
    const h = harness()
    h.connect('seed', hostInfo('seed'))
    for (const id of ['bad', 'c1', 'c2', 'c3']) h.connect(id)
    h.send('seed', { register: { taskId: TASK, url: URL } })
    h.send('seed', { sourceInfo: { taskId: TASK, info } })
    const all = new Bitmap(10); for (let i = 0; i < 10; i++) all.set(i)
    h.send('bad', { register: { taskId: TASK, url: URL, bitmap: all.bytes, completed: true } })
    for (const id of ['c1', 'c2', 'c3']) h.send(id, { register: { taskId: TASK, url: URL } })
    expect(h.last('c1', 'parents')!.parents.map(p => p.peerId)).toContain('bad')
    h.send('c1', { badParent: { taskId: TASK, parent: 'bad', reason: 'digest' } })
    expect(h.last('c1', 'parents')!.parents.map(p => p.peerId)).not.toContain('bad')
    h.send('c2', { badParent: { taskId: TASK, parent: 'bad', reason: 'digest' } })
    h.send('c3', { needParents: { taskId: TASK } })
    expect(h.last('c3', 'parents')!.parents.map(p => p.peerId)).not.toContain('bad')
  })

  it('sends each peer back to source on its own when there is no seed; a normal peer\'s failure fails only that peer', () => {
    const h = harness()
    h.connect('p1'); h.connect('p2')
    h.send('p1', { register: { taskId: TASK, url: URL } })
    expect(h.last('p1', 'backToSource')?.taskId).toBe(TASK)
    h.send('p2', { register: { taskId: TASK, url: URL } })
    expect(h.last('p2', 'backToSource')?.taskId).toBe(TASK)
    // a normal host's layout and digests are its own: nothing is relayed
    h.send('p1', { sourceInfo: { taskId: TASK, info } })
    h.send('p1', { pieceDone: { taskId: TASK, numbers: [0], digests: [digest(0)] } })
    h.core.flushAnnouncements()
    expect(h.last('p2', 'taskInfo')).toBeUndefined()
    expect(h.last('p2', 'digests')).toBeUndefined()
    h.send('p1', { result: { taskId: TASK, success: false, error: { name: 'OriginStatusError', code: 'ERR_ORIGIN_STATUS', message: 'origin returned HTTP 404', status: 404 } } })
    expect(h.last('p2', 'failed')).toBeUndefined()
    expect(h.core.tasks.get(TASK)?.peers.has('p2')).toBe(true)
  })

  it('fails the task for everyone on a designated seed\'s origin error', () => {
    const h = harness()
    h.connect('seed', hostInfo('seed'))
    h.connect('p1')
    h.send('p1', { register: { taskId: TASK, url: URL } })
    h.send('seed', { register: { taskId: TASK, url: URL } })
    h.send('seed', { result: { taskId: TASK, success: false, error: { name: 'OriginStatusError', code: 'ERR_ORIGIN_STATUS', message: 'origin returned HTTP 404', status: 404 } } })
    expect(h.last('p1', 'failed')?.error.status).toBe(404)
    expect(h.core.tasks.has(TASK)).toBe(false)
  })

  it('re-seeds when the seed leaves before the swarm holds every piece', () => {
    const h = harness()
    const s1 = h.connect('s1', hostInfo('seed'))
    h.connect('s2', hostInfo('seed'))
    h.connect('p1')
    h.send('p1', { register: { taskId: TASK, url: URL } })
    const first = h.last('s1', 'seed') != null ? 's1' : 's2'
    const other = first === 's1' ? 's2' : 's1'
    h.send(first, { register: { taskId: TASK, url: URL } })
    h.send(first, { sourceInfo: { taskId: TASK, info } })
    h.send(first, { pieceDone: { taskId: TASK, numbers: [0], digests: [digest(0)] } })
    h.core.disconnectHost(first === 's1' ? s1 : h.core.hosts.get('s2')!)
    expect(h.last(other, 'seed')?.taskId).toBe(TASK)
  })

  it('waits for seeds to reconnect after a restart before sending a peer to the origin', async () => {
    const core = new SchedulerCore(silentLogger, 200)
    const box: SchedulerMessage[] = []
    const p1 = core.connectHost('p1', hostInfo(), m => { box.push(m) })
    core.handleMessage(p1, { register: { taskId: TASK, url: URL } })
    expect(box.find(m => m.backToSource != null)).toBeUndefined()
    const seedBox: SchedulerMessage[] = []
    core.connectHost('seed', hostInfo('seed'), m => { seedBox.push(m) }, { designated: true })
    await new Promise(resolve => setTimeout(resolve, 300))
    expect(seedBox.find(m => m.seed != null)?.seed?.taskId).toBe(TASK)
    expect(box.find(m => m.backToSource != null)).toBeUndefined()
  })

  it('scores parents by pieces, free slots, load and locality', () => {
    const base = { parentPieces: 5, pieceCount: 10, parentFreeSlots: 4, parentSlots: 8, parentLoad: 0.5, parentIdc: '', childIdc: '', parentLocation: '', childLocation: '' }
    expect(evaluate({ ...base, parentPieces: 10 })).toBeGreaterThan(evaluate(base))
    expect(evaluate({ ...base, parentFreeSlots: 8 })).toBeGreaterThan(evaluate(base))
    expect(evaluate({ ...base, parentIdc: 'a', childIdc: 'a' })).toBeGreaterThan(evaluate(base))
    expect(locationAffinity('cn|sh|r1', 'cn|sh|r2')).toBeCloseTo(2 / 5)
    expect(evaluate({ ...base, parentLoad: 1 })).toBeLessThan(evaluate(base))
  })
})
