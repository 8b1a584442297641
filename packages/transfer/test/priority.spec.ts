import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { createNode, servePieces, PieceConnection, Priority, silentLogger, type PieceDuplex, type PieceResult, type Libp2p } from '../src/index.js'

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => { for (const f of cleanup.splice(0).reverse()) await f() })

function fakeChannel (): { duplex: PieceDuplex, feed: (b: Uint8Array) => void } {
  let onData: ((c: Uint8Array) => void) | undefined
  const duplex: PieceDuplex = {
    send () { return true },
    async onDrain () {},
    writeStatus: 'writable',
    async close () {},
    abort () {},
    attach (d) { onData = d },
    [Symbol.asyncIterator] () { throw new Error('push mode: not iterated') }
  }
  return { duplex, feed: b => { onData!(b) } }
}

function frame (n: number, body: Uint8Array): Buffer {
  const h = Buffer.alloc(41)
  h[0] = 0; h.writeUInt32BE(n, 1); h.writeUInt32BE(body.byteLength, 5)
  return Buffer.concat([h, body])
}

describe('piece priority', () => {
  it('a child takes the answer to a later, more urgent request first; each request\'s pieces stay in order', async () => {
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    const got: number[] = []
    const bg = conn.request({ taskId: 't', numbers: [1, 2], priority: Priority.BACKGROUND }, r => { got.push(r.n); if (!('refused' in r)) r.release?.() })
    const od = conn.request({ taskId: 't', numbers: [7], priority: Priority.ON_DEMAND }, r => { got.push(r.n); if (!('refused' in r)) r.release?.() })
    ch.feed(frame(7, randomBytes(10)))
    await od
    ch.feed(frame(1, randomBytes(10)))
    ch.feed(frame(2, randomBytes(10)))
    await bg
    expect(got).toEqual([7, 1, 2])
    // out of a request's order, or never asked: a violation, as before
    const ch2 = fakeChannel()
    const c2 = PieceConnection.over(ch2.duplex, 'integrity')
    const a = c2.request({ taskId: 't', numbers: [1, 2], priority: Priority.BACKGROUND }, () => {}).catch(e => e as Error)
    const b = c2.request({ taskId: 't', numbers: [7], priority: Priority.ON_DEMAND }, () => {}).catch(e => e as Error)
    ch2.feed(frame(2, randomBytes(10)))
    const err = await a as Error
    expect(err.name).toBe('PeerViolationError')
    expect(err.message).toMatch(/piece 2 arrived, 1 or 7 expected/)
    expect(((await b) as Error).name).toBe('PeerViolationError')
  })

  it('a parent answers an on-demand request ahead of background requests queued before it', async () => {
    const parent: Libp2p = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await parent.stop() })
    const piece = randomBytes(64 * 1024)
    await servePieces(parent, {
      log: silentLogger,
      // a slow disk: each piece takes 40 ms to read, so requests queue up at the parent
      provider: { getPiece: async () => { await new Promise(resolve => setTimeout(resolve, 40)); return { data: Buffer.from(piece), digest: new Uint8Array(32) } } }
    })
    const child: Libp2p = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await child.stop() })
    const conn = await PieceConnection.open(child, parent.getMultiaddrs(), { signal: AbortSignal.timeout(5_000) })
    cleanup.push(async () => { conn.close() })
    const order: number[] = []
    const onPiece = (r: PieceResult): void => { order.push(r.n); if (!('refused' in r)) r.release?.() }
    const bg = [conn.request({ taskId: 't', numbers: [0, 1, 2, 3], priority: Priority.BACKGROUND }, onPiece), conn.request({ taskId: 't', numbers: [4, 5, 6, 7], priority: Priority.BACKGROUND }, onPiece)]
    await new Promise(resolve => setTimeout(resolve, 20))
    const od = conn.request({ taskId: 't', numbers: [8, 9], priority: Priority.ON_DEMAND }, onPiece)
    await Promise.all([...bg, od])
    // at most the piece being read when it came (plus one whose read began) goes before it
    expect(order.indexOf(8)).toBeLessThanOrEqual(2)
    expect(order.indexOf(9)).toBe(order.indexOf(8) + 1)
    expect([...order].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })

  it('a fetch request for pieces the parent lacks is answered once they are held, the rest of its request in order, while other requests go on; without whenHeld, or unasked, they are refused', async () => {
    const parent: Libp2p = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await parent.stop() })
    const piece = randomBytes(16 * 1024)
    const held = new Set([0, 1, 2, 3, 11])
    const waits = new Map<number, () => void>()
    const asked: number[] = []
    await servePieces(parent, {
      log: silentLogger,
      provider: {
        getPiece: async (_t, n) => held.has(n) ? { data: Buffer.from(piece), digest: new Uint8Array(32) } : null,
        // piece 20 will never be held: settles false at once
        whenHeld: (_t, n) => { asked.push(n); if (n === 20) return Promise.resolve(false); return new Promise<boolean>(resolve => { waits.set(n, () => { held.add(n); resolve(true) }) }) }
      }
    })
    const child: Libp2p = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await child.stop() })
    const conn = await PieceConnection.open(child, parent.getMultiaddrs(), { signal: AbortSignal.timeout(5_000) })
    cleanup.push(async () => { conn.close() })
    const order: string[] = []
    const onPiece = (r: PieceResult): void => { order.push('refused' in r ? `${r.n}x` : `${r.n}`); if (!('refused' in r)) r.release?.() }
    // 10 is not held; 11 after it is, but a request's pieces go in order: both wait for 10
    const fetched = conn.request({ taskId: 't', numbers: [10, 11], priority: Priority.ON_DEMAND, fetch: true }, onPiece)
    await new Promise(resolve => setTimeout(resolve, 50))
    // the stream goes on meanwhile: other requests are answered, a lacking piece asked without fetch is refused
    await conn.request({ taskId: 't', numbers: [0, 1], priority: Priority.BACKGROUND }, onPiece)
    await conn.request({ taskId: 't', numbers: [12], priority: Priority.ON_DEMAND }, onPiece)
    expect(order).toEqual(['0', '1', '12x'])
    expect(asked).toEqual([10])
    waits.get(10)!()
    await fetched
    expect(order).toEqual(['0', '1', '12x', '10', '11'])
    // a piece the provider will not get: refused once that is known
    await conn.request({ taskId: 't', numbers: [20], priority: Priority.ON_DEMAND, fetch: true }, onPiece)
    expect(order.at(-1)).toBe('20x')

    // a parent that does not fetch for others refuses a fetch request as not held
    const plain: Libp2p = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await plain.stop() })
    await servePieces(plain, { log: silentLogger, provider: { getPiece: async () => null } })
    const c2 = await PieceConnection.open(child, plain.getMultiaddrs(), { signal: AbortSignal.timeout(5_000) })
    cleanup.push(async () => { c2.close() })
    const refused: string[] = []
    await c2.request({ taskId: 't', numbers: [3], priority: Priority.ON_DEMAND, fetch: true }, r => { refused.push('refused' in r ? r.refused : 'piece') })
    expect(refused).toEqual(['not held'])
  })
})
