// A parent whose connection for one download goes silent: busy (its host still sends to the daemon's
// other downloads) or hung (its host sends nothing at all). Real libp2p nodes, a real piece server and
// store; the scheduler is played by hand (PeerTask.onSchedulerMessage), so what the child tells it is seen.
import { describe, it, expect, afterEach } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bitmap, taskIdFrom } from '@guoce/content'
import { openStore, type TaskStore } from '@guoce/store'
import { createNode, servePieces, silentLogger, type Libp2p, type PeerMessage } from '@guoce/transfer'
import { PeerTask } from '../src/index.js'

const PIECE = 1024 * 1024
const COUNT = 8
const content = randomBytes(PIECE * COUNT)
const pieceOf = (n: number): Buffer => content.subarray(n * PIECE, (n + 1) * PIECE)
const digests = Array.from({ length: COUNT }, (_, n) => createHash('sha256').update(pieceOf(n)).digest())
const info = { contentLength: content.length, pieceLength: PIECE, pieceCount: COUNT }

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c() })

const never = new Promise<never>(() => {})
const idOf = (name: string): string => taskIdFrom({ url: `http://origin/${name}` })

/** A parent holding every piece of every task; `hang(task)` decides whether it answers that task at all. */
async function parent (hang: (task: string) => boolean | Promise<void>, delayMs = 0): Promise<Libp2p> {
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  cleanups.push(async () => { await node.stop() })
  await servePieces(node, {
    log: silentLogger,
    provider: {
      async getPiece (task, n) {
        const h = hang(task)
        if (h === true) return await never
        if (h !== false) await h
        if (delayMs > 0) await new Promise(resolve => setTimeout(resolve, delayMs))
        return { data: pieceOf(n), digest: digests[n]! }
      }
    }
  })
  return node
}

async function childStore (): Promise<TaskStore> {
  const dir = await mkdtemp(join(tmpdir(), 'guoce-stall-'))
  const store = await openStore({ dir })
  cleanups.push(async () => { await store.close(); await rm(dir, { recursive: true, force: true }) })
  return store
}

/** A download of `task` on the child, told its layout, digests and `parents` as the scheduler would. */
async function download (node: Libp2p, store: TaskStore, heard: Map<string, number>, name: string, parents: Libp2p[], seed?: Libp2p): Promise<{ t: PeerTask, sent: PeerMessage[] }> {
  const sent: PeerMessage[] = []
  const task = idOf(name)
  const t = new PeerTask({ taskId: task, request: { url: `http://origin/${name}` }, node, store, send: m => { sent.push(m); return true }, log: silentLogger, heard })
  cleanups.push(() => { t.stop() })
  await t.start()
  t.onSchedulerMessage({ taskInfo: { taskId: task, info } })
  t.onSchedulerMessage({ digests: { taskId: task, numbers: digests.map((_, n) => n), digests } })
  const full = new Bitmap(COUNT); for (let n = 0; n < COUNT; n++) full.set(n)
  t.onSchedulerMessage({ parents: { taskId: task, stripeCount: 0, parents: parents.map(p => ({ peerId: p.peerId.toString(), addrs: p.getMultiaddrs().map(a => a.bytes), bitmap: full.bytes, stripes: 0, seed: p === seed })) } })
  return { t, sent }
}

const blamed = (sent: PeerMessage[]): string[] => sent.filter(m => m.badParent != null).map(m => m.badParent!.parent)

describe('a silent parent', () => {
  it('busy (its host still sends to another download) is not blamed: its pieces go to another parent; hung (its host sends nothing) is blamed', async () => {
    // P answers task "busy-b" slowly, never task "starved-a" nor "hung-c"; Q answers everything
    const p = await parent(task => task !== idOf('busy-b'), 400)
    const q = await parent(() => false)
    const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanups.push(async () => { await node.stop() })
    const store = await childStore()
    const heard = new Map<string, number>()
    const pid = p.peerId.toString()

    // B keeps P's host talking to this daemon (a piece every 400 ms, about 3.2 s in all)
    const b = await download(node, store, heard, 'busy-b', [p])
    // A's connection to P brings nothing: silent after PARENT_STALL_MS, its pieces asked of Q; P is not blamed
    const t0 = Date.now()
    const a = await download(node, store, heard, 'starved-a', [p, q])
    await a.t.finished
    expect(a.t.piecesFromPeers).toBe(COUNT)
    expect(blamed(a.sent)).toEqual([])
    expect(Date.now() - t0).toBeLessThan(15_000)
    await b.t.finished
    expect(blamed(b.sent)).toEqual([])

    // P's host now sends nothing to this daemon at all: a download waiting on it blames it as hung
    const c = await download(node, store, heard, 'hung-c', [p])
    const t1 = Date.now()
    for (let i = 0; i < 100 && blamed(c.sent).length === 0; i++) await new Promise(resolve => setTimeout(resolve, 100))
    expect(blamed(c.sent)).toEqual([pid])
    expect(c.sent.find(m => m.badParent != null)!.badParent!.reason).toMatch(/sent no byte for \d+ ms/)
    expect(Date.now() - t1).toBeLessThan(6_000)
  }, 30_000)

  it('the task\'s seed is never blamed for silence: the child waits for it, and takes its pieces when they come', async () => {
    // the seed answers nothing for 5 s (a loaded host: no byte to anyone), then everything
    const wake = new Promise<void>(resolve => setTimeout(resolve, 5_000))
    const seed = await parent(() => wake)
    const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanups.push(async () => { await node.stop() })
    const store = await childStore()
    const t0 = Date.now()
    const d = await download(node, store, new Map(), 'slow-seed', [seed], seed)
    await d.t.finished
    expect(Date.now() - t0).toBeGreaterThan(4_000)
    expect(blamed(d.sent)).toEqual([])
    expect(d.t.piecesFromPeers).toBe(COUNT)
    expect(d.t.piecesFromSource).toBe(0)
  }, 30_000)
})
