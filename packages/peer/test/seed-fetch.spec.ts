// A ranged read of a piece no parent holds asks the task's seed itself (PieceRequest.fetch), besides the
// scheduler's want: the seed answers once it holds the piece, with its own digest, which the child takes from
// the designated seed only. Real libp2p nodes, piece servers and store; the scheduler is played by hand.
import { describe, it, expect, afterEach } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bitmap, taskIdFrom } from '@guoce/content'
import { openStore, type TaskStore } from '@guoce/store'
import { createNode, servePieces, silentLogger, Priority, type Libp2p, type PeerMessage, type PieceProvider } from '@guoce/transfer'
import { PeerTask } from '../src/index.js'

const PIECE = 128 * 1024
const COUNT = 16
const content = randomBytes(PIECE * COUNT)
const pieceOf = (n: number): Buffer => content.subarray(n * PIECE, (n + 1) * PIECE)
const digestOf = (n: number): Buffer => createHash('sha256').update(pieceOf(n)).digest()
const info = { contentLength: content.length, pieceLength: PIECE, pieceCount: COUNT }

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c() })

/** A parent that holds nothing at first and fetches a piece when asked to (whenHeld), after `delayMs`. */
async function fetchingParent (o: { delayMs?: number, corrupt?: (n: number) => boolean } = {}): Promise<{ node: Libp2p, asked: number[] }> {
  const held = new Set<number>()
  const asked: number[] = []
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  cleanups.push(async () => { await node.stop() })
  const provider: PieceProvider = {
    getPiece: async (_t, n) => {
      if (!held.has(n)) return null
      // corrupt: other bytes under the right piece's digest (a frame damaged on the way)
      return { data: o.corrupt?.(n) === true ? randomBytes(PIECE) : Buffer.from(pieceOf(n)), digest: digestOf(n) }
    },
    whenHeld: (_t, n) => {
      asked.push(n)
      return new Promise<boolean>(resolve => setTimeout(() => { held.add(n); resolve(true) }, o.delayMs ?? 50))
    }
  }
  await servePieces(node, { log: silentLogger, provider })
  return { node, asked }
}

async function childStore (): Promise<TaskStore> {
  const dir = await mkdtemp(join(tmpdir(), 'guoce-seedfetch-'))
  const store = await openStore({ dir })
  cleanups.push(async () => { await store.close(); await rm(dir, { recursive: true, force: true }) })
  return store
}

/** A ranged download told its layout (no digest yet) and one parent that holds nothing, marked seed or not. */
async function lazyDownload (name: string, parent: Libp2p, seed: boolean): Promise<{ t: PeerTask, sent: PeerMessage[] }> {
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  cleanups.push(async () => { await node.stop() })
  const store = await childStore()
  const sent: PeerMessage[] = []
  const taskId = taskIdFrom({ url: `http://origin/${name}` })
  const t = new PeerTask({ taskId, request: { url: `http://origin/${name}`, ranged: true }, node, store, send: m => { sent.push(m); return true }, log: silentLogger })
  cleanups.push(() => { t.stop() })
  await t.start()
  t.onSchedulerMessage({ taskInfo: { taskId, info } })
  t.onSchedulerMessage({ parents: { taskId, stripeCount: 0, parents: [{ peerId: parent.peerId.toString(), addrs: parent.getMultiaddrs().map(a => a.bytes), bitmap: new Bitmap(COUNT).bytes, stripes: 0, seed }] } })
  return { t, sent }
}

const wants = (sent: PeerMessage[]): number[] => sent.flatMap(m => m.want?.numbers ?? [])

describe('a ranged read asks the seed itself', () => {
  it('the seed fetches the piece and answers with its digest before the scheduler relays it; the bytes are right', async () => {
    const seed = await fetchingParent()
    const { t, sent } = await lazyDownload('fetched', seed.node, true)
    const s = await t.whenPiece(5, { priority: Priority.ON_DEMAND, timeoutMs: 10_000 })
    expect(Buffer.from(await s.read(5 * PIECE, PIECE)).equals(pieceOf(5))).toBe(true)
    expect(seed.asked).toEqual([5])
    // the scheduler was asked as well (the path that does not depend on this one)
    expect(wants(sent)).toContain(5)
    expect(t.piecesFromPeers).toBe(1)
  })

  it('the piece connection to the seed is opened when the seed is named, before any read', async () => {
    const seed = await fetchingParent()
    const { t } = await lazyDownload('early', seed.node, true)
    for (let i = 0; i < 50 && seed.node.getConnections().length === 0; i++) await new Promise(resolve => setTimeout(resolve, 20))
    expect(seed.node.getConnections().length).toBe(1)
    expect(seed.asked).toEqual([])
    expect(t.piecesFromPeers).toBe(0)
  })

  it('bytes that do not match the seed\'s digest are refused and the seed is blamed; nothing is stored', async () => {
    const seed = await fetchingParent({ corrupt: () => true })
    const { t, sent } = await lazyDownload('corrupt', seed.node, true)
    await expect(t.whenPiece(2, { priority: Priority.ON_DEMAND, timeoutMs: 1_500 })).rejects.toThrow()
    expect(seed.asked).toContain(2)
    expect(sent.filter(m => m.badParent != null).map(m => m.badParent!.reason)).toEqual([expect.stringMatching(/piece 2: sha256 .* does not match/)])
    expect(t.piecesFromPeers).toBe(0)
  })

  it('a parent the scheduler does not name as the seed is not asked to fetch, and no digest of its is taken', async () => {
    const other = await fetchingParent()
    const { t, sent } = await lazyDownload('not-seed', other.node, false)
    await expect(t.whenPiece(7, { priority: Priority.ON_DEMAND, timeoutMs: 1_000 })).rejects.toThrow()
    expect(other.asked).toEqual([])
    expect(wants(sent)).toContain(7)
    expect(t.piecesFromPeers).toBe(0)
  })
})
