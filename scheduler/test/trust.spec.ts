import { describe, it, expect } from 'vitest'
import { silentLogger, MAX_TASK_PIECES, type SchedulerMessage, type WireHostInfo } from '@guoce/transfer'
import { credentialHash, importUrl, taskIdFrom } from '@guoce/content'
import { SchedulerCore, HOST_OFFENCE_LIMIT, MAX_WANT_PIECES, MAX_HOST_TASKS, MAX_NEW_TASKS_PER_MINUTE, MAX_HOST_ADDRS, helloProblem, layoutProblem, registerProblem, type Host } from '../src/index.js'

const MiB = 1024 * 1024
const URL_A = 'http://origin/a.bin'
const URL_B = 'http://origin/b.bin'
const A = taskIdFrom({ url: URL_A })

function hostInfo (type: 'normal' | 'seed' = 'normal', extra: Partial<WireHostInfo> = {}): WireHostInfo {
  return { type, uploadSlots: 8, uploadBps: 0, idc: '', location: '', addrs: [], hostname: '', load: 0, ...extra }
}

function harness () {
  const core = new SchedulerCore(silentLogger, 0)
  const inbox = new Map<string, SchedulerMessage[]>()
  const closed = new Set<string>()
  const hosts = new Map<string, Host>()
  const connect = (id: string, type: 'normal' | 'seed' = 'normal', designated = type === 'seed'): Host => {
    inbox.set(id, [])
    const h = core.connectHost(id, hostInfo(type), m => { inbox.get(id)!.push(m) }, { designated, close: () => { closed.add(id) } })
    hosts.set(id, h)
    return h
  }
  const send = (id: string, msg: Parameters<SchedulerCore['handleMessage']>[1]): void => { core.handleMessage(hosts.get(id)!, msg) }
  const got = (id: string, key: keyof SchedulerMessage): number => inbox.get(id)!.filter(m => m[key] != null).length
  return { core, inbox, closed, connect, send, got }
}

describe('scheduler trust', () => {
  it('refuses a register whose task id does not derive from its fields', () => {
    expect(registerProblem({ taskId: A, url: URL_A })).toBeUndefined()
    expect(registerProblem({ taskId: A, url: URL_B })).toMatch(/does not derive/)
    expect(registerProblem({ taskId: A, url: URL_A, version: 'etag:"x"' })).toMatch(/does not derive/)
    expect(registerProblem({ taskId: 'zz', url: URL_A })).toMatch(/malformed task id/)
    // the piece length a request names is part of its id, and bounded
    const named = taskIdFrom({ url: URL_A, pieceLength: 128 * 1024 })
    expect(registerProblem({ taskId: named, url: URL_A, pieceLength: 128 * 1024 })).toBeUndefined()
    expect(registerProblem({ taskId: named, url: URL_A })).toMatch(/does not derive/)
    expect(registerProblem({ taskId: A, url: URL_A, pieceLength: 128 * 1024 })).toMatch(/does not derive/)
    expect(registerProblem({ taskId: A, url: URL_A, pieceLength: 1000 })).toMatch(/piece length 1000/)
    const headers = { Authorization: 'Bearer s3cret' }
    const credentials = credentialHash({ url: URL_A, headers })!
    const priv = taskIdFrom({ url: URL_A, credentials })
    expect(registerProblem({ taskId: priv, url: URL_A, headers, credentials })).toBeUndefined()
    // headers that do not hash to the credentials the id carries
    expect(registerProblem({ taskId: priv, url: URL_A, headers: { Authorization: 'Bearer other' }, credentials })).toMatch(/credentials/)
    expect(registerProblem({ taskId: A, url: URL_A + '?' + 'x'.repeat(20_000) })).toMatch(/task reference/)

    const h = harness()
    h.connect('seed', 'seed')
    h.connect('evil')
    h.send('evil', { register: { taskId: A, url: URL_B } })
    expect(h.core.tasks.has(A)).toBe(false)
    expect(h.got('seed', 'seed')).toBe(0)
  })

  it('drops a host after HOST_OFFENCE_LIMIT refused messages and refuses it for a while', () => {
    const h = harness()
    h.connect('evil')
    for (let i = 0; i < HOST_OFFENCE_LIMIT; i++) h.send('evil', { register: { taskId: A, url: `${URL_B}?${i}` } })
    expect(h.closed.has('evil')).toBe(true)
    expect(h.core.hosts.has('evil')).toBe(false)
    expect(h.core.isBanned('evil')).toBe(true)
  })

  it('a host that says seed without being designated gets no seed order and its claims count for nothing', () => {
    const h = harness()
    h.connect('fake', 'seed', false)
    h.connect('p1')
    h.send('p1', { register: { taskId: A, url: URL_A, headers: {} } })
    h.send('fake', { register: { taskId: A, url: URL_A } })
    expect(h.got('fake', 'seed')).toBe(0)
    expect(h.core.hosts.get('fake')!.isSeed).toBe(false)
    h.send('fake', { sourceInfo: { taskId: A, info: { contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 } } })
    h.send('fake', { result: { taskId: A, success: false, error: { name: 'OriginStatusError', code: 'ERR_ORIGIN_STATUS', message: '404', status: 404 } } })
    expect(h.got('p1', 'taskInfo')).toBe(0)
    expect(h.got('p1', 'failed')).toBe(0)
    expect(h.core.tasks.get(A)?.peers.has('p1')).toBe(true)
  })

  it('takes the layout and digests of imported content from its complete holder, and of nothing else', () => {
    const digest = `sha256:${'ab'.repeat(32)}`
    const info = { contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 }
    const d = (n: number): Uint8Array => new Uint8Array(32).fill(n + 1)
    // a digest-named task under a real URL: a complete normal holder's layout counts for nothing
    const h = harness()
    const other = `sha256:${'cd'.repeat(32)}`
    const real = taskIdFrom({ url: URL_A, digest: other })
    h.connect('other')
    h.connect('holder')
    h.connect('p1')
    h.send('other', { register: { taskId: real, url: URL_A, digest: other, bitmap: new Uint8Array([0xf0]), completed: true } })
    h.send('other', { sourceInfo: { taskId: real, info } })
    expect(h.core.tasks.get(real)!.info).toBeUndefined()
    // imported content: the holder that registered it complete vouches; a running peer does not
    const imported = taskIdFrom({ url: importUrl(digest), digest })
    h.send('p1', { register: { taskId: imported, url: importUrl(digest), digest } })
    h.send('p1', { sourceInfo: { taskId: imported, info } })
    expect(h.core.tasks.get(imported)!.info).toBeUndefined()
    h.send('holder', { register: { taskId: imported, url: importUrl(digest), digest, bitmap: new Uint8Array([0xf0]), completed: true } })
    h.send('holder', { sourceInfo: { taskId: imported, info: { ...info, pieceCount: 2 ** 30 } } })
    expect(h.core.tasks.get(imported)!.info).toBeUndefined()
    h.send('holder', { sourceInfo: { taskId: imported, info } })
    expect(h.core.tasks.get(imported)!.info?.pieceCount).toBe(4)
    h.send('holder', { pieceDone: { taskId: imported, numbers: [0, 1, 2, 3], digests: [0, 1, 2, 3].map(d) } })
    expect(h.core.tasks.get(imported)!.digests.filter(x => x != null)).toHaveLength(4)
    // a second holder cannot replace the layout or the digests
    h.connect('late')
    h.send('late', { register: { taskId: imported, url: importUrl(digest), digest, bitmap: new Uint8Array([0xf0]), completed: true } })
    h.send('late', { sourceInfo: { taskId: imported, info: { contentLength: 2 * MiB, pieceLength: MiB, pieceCount: 2 } } })
    h.send('late', { pieceDone: { taskId: imported, numbers: [0], digests: [d(9)] } })
    expect(h.core.tasks.get(imported)!.info?.pieceCount).toBe(4)
    expect(h.core.tasks.get(imported)!.digests[0]).toEqual(d(0))
    // the same digest named by a URL with an origin: the task takes that URL (a seed can fetch it)
    h.send('late', { register: { taskId: imported, url: URL_B, digest } })
    expect(h.core.tasks.get(imported)!.ref.url).toBe(URL_B)
  })

  it('refuses layouts out of bounds and ignores bitmaps of the wrong length', () => {
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 })).toBeUndefined()
    expect(layoutProblem({ contentLength: 0, pieceLength: MiB, pieceCount: 0 })).toBeUndefined()
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 2 ** 30 })).toMatch(/piece count/)
    expect(layoutProblem({ contentLength: 2 ** 30 * MiB, pieceLength: MiB, pieceCount: 2 ** 30 })).toMatch(/content length/)
    expect(layoutProblem({ contentLength: 4096, pieceLength: 1024, pieceCount: 4 })).toMatch(/piece length/)
    expect(layoutProblem({ contentLength: 2 * MiB * MAX_TASK_PIECES, pieceLength: MiB, pieceCount: 2 * MAX_TASK_PIECES })).toMatch(/above/)
    // a task whose request names its piece length (TaskRequest.pieceLength) has exactly that layout
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: 128 * 1024, pieceCount: 32 }, 128 * 1024)).toBeUndefined()
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 }, 128 * 1024)).toMatch(/names/)
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: 128 * 1024, pieceCount: 32 })).toMatch(/names none/)
    expect(layoutProblem({ contentLength: 4 * MiB, pieceLength: 32 * 1024, pieceCount: 128 }, 32 * 1024)).toMatch(/piece length/)

    const h = harness()
    h.connect('seed', 'seed')
    h.connect('p1')
    h.send('p1', { register: { taskId: A, url: URL_A } })
    h.send('seed', { register: { taskId: A, url: URL_A } })
    h.send('seed', { sourceInfo: { taskId: A, info: { contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 2 ** 30 } } })
    expect(h.core.tasks.get(A)!.info).toBeUndefined()
    h.send('seed', { sourceInfo: { taskId: A, info: { contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 } } })
    expect(h.core.tasks.get(A)!.info?.pieceCount).toBe(4)
    h.connect('p2')
    h.send('p2', { register: { taskId: A, url: URL_A, bitmap: new Uint8Array(4096).fill(255), completed: true } })
    expect(h.core.tasks.get(A)!.peers.get('p2')!.bitmap!.count).toBe(0)

    // a task that names its piece length: the seed's order carries it, and only that layout is taken
    const N = taskIdFrom({ url: URL_B, pieceLength: 128 * 1024 })
    h.send('p1', { register: { taskId: N, url: URL_B, pieceLength: 128 * 1024, lazy: true } })
    const order = h.inbox.get('seed')!.filter(m => m.seed?.taskId === N).map(m => m.seed!)
    expect(order.length).toBe(1)
    expect(order[0]!.pieceLength).toBe(128 * 1024)
    h.send('seed', { register: { taskId: N, url: URL_B, pieceLength: 128 * 1024, lazy: true } })
    h.send('seed', { sourceInfo: { taskId: N, info: { contentLength: 4 * MiB, pieceLength: MiB, pieceCount: 4 } } })
    expect(h.core.tasks.get(N)!.info).toBeUndefined()
    h.send('seed', { sourceInfo: { taskId: N, info: { contentLength: 4 * MiB, pieceLength: 128 * 1024, pieceCount: 32 } } })
    expect(h.core.tasks.get(N)!.info?.pieceCount).toBe(32)
  })

  it('drops a host that registers more than MAX_HOST_TASKS tasks, and frees its state', () => {
    const h = harness()
    h.connect('flood')
    for (let i = 0; i <= MAX_HOST_TASKS; i++) {
      const url = `http://origin/${i}`
      h.send('flood', { register: { taskId: taskIdFrom({ url }), url, completed: true } })
      if (h.closed.has('flood')) break
    }
    expect(h.closed.has('flood')).toBe(true)
    expect(h.core.stats()).toEqual({ hosts: 0, tasks: 0, peers: 0 })
  })

  it('refuses new tasks above MAX_NEW_TASKS_PER_MINUTE from one host (each costs a seed an origin fetch)', () => {
    const h = harness()
    h.connect('seed', 'seed')
    h.connect('busy')
    for (let i = 0; i < MAX_NEW_TASKS_PER_MINUTE + 10; i++) {
      const url = `http://origin/new/${i}`
      h.send('busy', { register: { taskId: taskIdFrom({ url }), url } })
    }
    expect(h.got('seed', 'seed')).toBe(MAX_NEW_TASKS_PER_MINUTE)
    expect(h.core.tasks.size).toBe(MAX_NEW_TASKS_PER_MINUTE)
    expect(h.closed.has('busy')).toBe(false)
  })

  it('refuses a hello whose addresses or labels would swell every parents message', () => {
    expect(helloProblem(hostInfo())).toBeUndefined()
    expect(helloProblem(hostInfo('normal', { addrs: Array.from({ length: MAX_HOST_ADDRS + 1 }, () => new Uint8Array(8)) }))).toMatch(/addresses/)
    expect(helloProblem(hostInfo('normal', { hostname: 'h'.repeat(10_000) }))).toMatch(/label/)
  })
})

describe('lazy tasks (ranged reads)', () => {
  function lazySwarm () {
    const h = harness()
    h.connect('seed', 'seed')
    h.connect('reader')
    h.send('reader', { register: { taskId: A, url: URL_A, lazy: true } })
    // a lazy register orders a lazy seed: the layout only
    const order = h.inbox.get('seed')!.find(m => m.seed != null)!.seed!
    expect(order.lazy).toBe(true)
    h.send('seed', { register: { taskId: A, url: URL_A, lazy: true } })
    h.send('seed', { sourceInfo: { taskId: A, info: { contentLength: 64 * MiB, pieceLength: MiB, pieceCount: 64 } } })
    return h
  }
  const seedOrders = (h: ReturnType<typeof harness>): Array<NonNullable<SchedulerMessage['seed']>> => h.inbox.get('seed')!.filter(m => m.seed != null).map(m => m.seed!)

  it('forwards the wanted pieces nobody holds to the seed, first, and gives a lazy reader the seed as a parent', () => {
    const h = lazySwarm()
    const last = h.inbox.get('reader')!.findLast(m => m.parents != null)!.parents!
    expect(last.parents.map(p => p.peerId)).toContain('seed')
    h.send('seed', { pieceDone: { taskId: A, numbers: [7], digests: [new Uint8Array(32).fill(7)] } })
    h.send('reader', { want: { taskId: A, numbers: [7, 8, 9, 99, -1], priority: 0 } })
    const orders = seedOrders(h)
    // 7 is held (its digest relayed), 99 and -1 are outside the task: only 8 and 9 go to the seed
    expect(orders.at(-1)).toMatchObject({ taskId: A, lazy: true, numbers: [8, 9] })
    // a whole download of the task joins: the seed is told to fill the rest
    h.connect('full')
    h.send('full', { register: { taskId: A, url: URL_A } })
    expect(seedOrders(h).at(-1)!.lazy).toBe(false)
  })

  it('a want naming more than MAX_WANT_PIECES pieces is an offence; enough of them drop the host', () => {
    const h = lazySwarm()
    const before = seedOrders(h).length
    const many = Array.from({ length: MAX_WANT_PIECES + 1 }, (_, i) => i)
    for (let i = 0; i < HOST_OFFENCE_LIMIT; i++) h.send('reader', { want: { taskId: A, numbers: many, priority: 0 } })
    expect(seedOrders(h).length).toBe(before)
    expect(h.closed.has('reader')).toBe(true)
  })
})
