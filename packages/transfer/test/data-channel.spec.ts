import { describe, it, expect, afterEach } from 'vitest'
import { createServer, connect, type Socket, type Server } from 'node:net'
import { once } from 'node:events'
import { createHash, randomBytes } from 'node:crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import { verifyPiece } from '@guoce/content'
import { createNode, servePieces, PieceConnection, Priority, silentLogger, ByteReader, lpEncode, dataChannelRequest, dataChannelOffer, pieceRequest, PIECE_DATA_PROTOCOL, type PieceResult, type DataChannelInit, type Libp2p } from '../src/index.js'
import { DataStream, DataChannelServer, deriveKeys, openDataStream, type DataStreamLimits } from '../src/data-channel.js'
import { DATA_CHANNEL_MAX_PER_PEER, PIECE_REQUEST_BUFFER_BYTES } from '../src/constants.js'

const PIECE = 256 * 1024
const COUNT = 8
const pieces = Array.from({ length: COUNT }, () => randomBytes(PIECE))
const digests = pieces.map(p => createHash('sha256').update(p).digest())

const cleanup: Array<() => Promise<void> | void> = []
afterEach(async () => { for (const f of cleanup.splice(0).reverse()) await f() })

/** a parent serving `pieces`; `corrupt` pieces are sent with one byte flipped (claimed digest unchanged) */
async function parent (dataChannel?: boolean | DataChannelInit, corrupt = new Set<number>()): Promise<Libp2p> {
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  cleanup.push(async () => { await node.stop() })
  await servePieces(node, {
    log: silentLogger,
    ...(dataChannel != null ? { dataChannel } : {}),
    provider: {
      async getPiece (_task, n) {
        const data = Buffer.from(pieces[n]!)
        if (corrupt.has(n)) data[1234] = data[1234]! ^ 0xff
        return { data, digest: digests[n]! }
      }
    }
  })
  return node
}

async function child (): Promise<Libp2p> {
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  cleanup.push(async () => { await node.stop() })
  return node
}

/** ask `parent` for a data channel of `mode` (1 secure, 2 integrity) as `node`: its offer or refusal */
async function askChannel (node: Libp2p, parent: Libp2p, mode: number): Promise<{ port?: number, token?: Uint8Array, refused?: string }> {
  const s = await node.dialProtocol(parent.getMultiaddrs(), PIECE_DATA_PROTOCOL)
  s.send(lpEncode(dataChannelRequest.encode({ mode })))
  const b = await new ByteReader(s).lp(1024)
  await s.close().catch(() => {})
  return dataChannelOffer.decode(b!)
}

/** an integrity channel from `offer` that asks `requests` x 64 pieces (numbers mod `count`) and reads nothing (paused) */
async function deafSocket (offer: { port?: number, token?: Uint8Array }, requests: number, count = Infinity): Promise<Socket> {
  const sock = connect(offer.port!, '127.0.0.1')
  sock.on('error', () => {})
  cleanup.push(() => { sock.destroy() })
  await once(sock, 'connect')
  sock.pause()
  sock.write(offer.token!)
  for (let i = 0; i < requests; i++) sock.write(lpEncode(pieceRequest.encode({ taskId: 't', numbers: Array.from({ length: 64 }, (_, j) => j % count), priority: 2 })).subarray())
  return sock
}

/** fetch every piece; verify each against the seed's digests as the peer does */
async function fetchAll (conn: PieceConnection): Promise<{ ok: number[], rejected: Array<{ n: number, name: string }> }> {
  const ok: number[] = []; const rejected: Array<{ n: number, name: string }> = []
  const results: PieceResult[] = []
  await conn.request({ taskId: 't', numbers: [0, 1, 2, 3], priority: Priority.BACKGROUND }, r => { results.push(r) })
  await conn.request({ taskId: 't', numbers: [4, 5, 6, 7], priority: Priority.BACKGROUND }, r => { results.push(r) })
  for (const r of results) {
    if ('refused' in r) throw new Error(r.refused)
    try {
      verifyPiece(r.n, r.data, digests[r.n]!)
      expect(Buffer.from(r.data).equals(pieces[r.n]!)).toBe(true)
      ok.push(r.n)
    } catch (err) {
      rejected.push({ n: r.n, name: (err as Error).name })
    }
  }
  return { ok, rejected }
}

describe('piece data channels', () => {
  it('secure channel: pieces arrive byte-exact over AES-GCM records on direct TCP', async () => {
    const p = await parent(true)
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs(), { channel: 'secure' })
    cleanup.push(() => { conn.close() })
    expect(conn.channel).toBe('secure')
    const { ok, rejected } = await fetchAll(conn)
    expect(ok).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
    expect(rejected).toEqual([])
  })

  it('the signal that bounds opening a channel does not close it once open', async () => {
    const p = await parent(true)
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs(), { channel: 'secure', signal: AbortSignal.timeout(300) })
    cleanup.push(() => { conn.close() })
    await new Promise(resolve => setTimeout(resolve, 600))
    expect(conn.isOpen).toBe(true)
    const { ok } = await fetchAll(conn)
    expect(ok).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
  })

  it('integrity-only channel still rejects a corrupted piece by its sha256', async () => {
    const p = await parent({ integrity: true }, new Set([2, 5]))
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs(), { channel: 'integrity' })
    cleanup.push(() => { conn.close() })
    expect(conn.channel).toBe('integrity')
    const { ok, rejected } = await fetchAll(conn)
    expect(ok).toEqual([0, 1, 3, 4, 6, 7])
    expect(rejected).toEqual([{ n: 2, name: 'PieceDigestMismatchError' }, { n: 5, name: 'PieceDigestMismatchError' }])
  })

  it('integrity-only is opt-in on the parent: a parent offering only secure channels keeps the child on the libp2p stream', async () => {
    const p = await parent(true)
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs(), { channel: 'integrity' })
    cleanup.push(() => { conn.close() })
    expect(conn.channel).toBe('stream')
    expect((await fetchAll(conn)).ok).toHaveLength(COUNT)
  })

  it('a parent without data channels serves the child on the libp2p stream', async () => {
    const p = await parent()
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs(), { channel: 'secure' })
    cleanup.push(() => { conn.close() })
    expect(conn.channel).toBe('stream')
    expect((await fetchAll(conn)).ok).toHaveLength(COUNT)
  })

  it('the default stays the Noise-secured libp2p stream', async () => {
    const p = await parent(true)
    const c = await child()
    const conn = await PieceConnection.open(c, p.getMultiaddrs())
    cleanup.push(() => { conn.close() })
    expect(conn.channel).toBe('stream')
  })
})

for (const push of [false, true]) {
  describe(`secure data stream (${push ? 'push-mode receiver, as a child reads' : 'iterated receiver, as a parent reads'})`, () => {
    /** sender DataStream -> `mangle` -> receiver DataStream, on loopback, through a proxy */
    async function pipe (mangle: (chunk: Buffer) => Buffer): Promise<{ sender: DataStream, receiver: DataStream }> {
      const secret = randomBytes(32); const token = randomBytes(32)
      const servers: Server[] = []
      const sockets: Socket[] = []
      const listen = async (onConn: (s: Socket) => void): Promise<number> => {
        const srv = createServer(s => { sockets.push(s); onConn(s) }); servers.push(srv)
        srv.listen(0, '127.0.0.1'); await once(srv, 'listening')
        return (srv.address() as { port: number }).port
      }
      cleanup.push(() => { for (const s of sockets) s.destroy(); for (const s of servers) s.close() })
      const senderKeys = deriveKeys(secret, token, 'parent'); const receiverKeys = deriveKeys(secret, token, 'child')
      if (!push) {
        const received = Promise.withResolvers<Socket>()
        const finalPort = await listen(s => { received.resolve(s) })
        const proxyPort = await listen(inbound => {
          const out = connect(finalPort, '127.0.0.1'); sockets.push(out)
          inbound.on('data', (b: Buffer) => out.write(mangle(b)))
          inbound.on('end', () => out.end())
        })
        const sendSock = connect(proxyPort, '127.0.0.1'); sockets.push(sendSock)
        await once(sendSock, 'connect')
        return { sender: new DataStream(sendSock, senderKeys), receiver: new DataStream(await received.promise, receiverKeys) }
      }
      // the receiver dials (as a child does) with onread into one small reused buffer
      const accepted = Promise.withResolvers<Socket>()
      const senderPort = await listen(s => { accepted.resolve(s) })
      const proxyPort = await listen(inbound => {
        const out = connect(senderPort, '127.0.0.1'); sockets.push(out)
        out.on('data', (b: Buffer) => inbound.write(mangle(b)))
        out.on('end', () => inbound.end())
      })
      let receiver: DataStream | undefined
      const recvSock = connect({ port: proxyPort, host: '127.0.0.1', onread: { buffer: Buffer.alloc(1000), callback: (n: number, b: Buffer) => { receiver!.onRead(n, b); return true } } })
      sockets.push(recvSock)
      receiver = new DataStream(recvSock, receiverKeys, true)
      await once(recvSock, 'connect')
      return { sender: new DataStream(await accepted.promise, senderKeys), receiver }
    }

    /** every byte the receiver releases; rejects with its error */
    async function readAll (ds: DataStream, parts: Buffer[] = []): Promise<Buffer> {
      if (ds.attach == null) {
        for await (const c of ds) parts.push(Buffer.from(c))
        return Buffer.concat(parts)
      }
      return await new Promise((resolve, reject) => {
        ds.attach!(c => { parts.push(Buffer.from(c)) }, err => { if (err != null) reject(err); else resolve(Buffer.concat(parts)) })
      })
    }

    it('round-trips records', async () => {
      const { sender, receiver } = await pipe(b => b)
      const data = randomBytes(3 * 1024 * 1024 + 17)
      sender.send(data)
      await sender.close()
      expect((await readAll(receiver)).equals(data)).toBe(true)
    })

    it('packs the chunks of one send into shared records', async () => {
      const { sender, receiver } = await pipe(b => b)
      const head = randomBytes(41); const body = randomBytes(2 * 1024 * 1024 + 5)
      sender.send(new Uint8ArrayList(head, body))
      await sender.close()
      expect((await readAll(receiver)).equals(Buffer.concat([head, body]))).toBe(true)
    })

    it('a flipped ciphertext bit fails authentication and releases nothing of that record', async () => {
      let seen = 0
      const { sender, receiver } = await pipe(b => {
        const out = Buffer.from(b)
        if (seen <= 100 && seen + out.byteLength > 100) out[100 - seen] = out[100 - seen]! ^ 1
        seen += out.byteLength
        return out
      })
      sender.send(randomBytes(64 * 1024))
      await sender.close()
      const parts: Buffer[] = []
      await expect(readAll(receiver, parts)).rejects.toMatchObject({ name: 'ProtocolError' })
      expect(parts).toEqual([])
    })

    it('a replayed record fails authentication', async () => {
      let first: Buffer | undefined
      const { sender, receiver } = await pipe(b => {
        if (first == null) { first = Buffer.from(b); return Buffer.concat([b, b]) }
        return b
      })
      sender.send(Buffer.from('one small record'))
      const got: Buffer[] = []
      await expect(readAll(receiver, got)).rejects.toMatchObject({ name: 'ProtocolError' })
      expect(Buffer.concat(got).toString()).toBe('one small record')
    })

    it('an end inside a record is an error, not a short read', async () => {
      let seen = 0
      const { sender, receiver } = await pipe(b => {
        const keep = Math.max(0, Math.min(b.byteLength, 5000 - seen)); seen += b.byteLength
        return b.subarray(0, keep)
      })
      sender.send(randomBytes(64 * 1024))
      await sender.close()
      await expect(readAll(receiver)).rejects.toMatchObject({ name: 'ProtocolError' })
    })
  })
}

describe('data channel tokens', () => {
  it('a token opens one connection only; an unknown token is dropped', async () => {
    const streams: DataStream[] = []
    const server = new DataChannelServer(s => { streams.push(s) }, new Set(['integrity']))
    const port = await server.listen(0, '127.0.0.1')
    cleanup.push(async () => { await server.close() })
    const { token } = server.offer('integrity', 'peer')
    const a = await openDataStream('127.0.0.1', port, 'integrity', token, new Uint8Array())
    a.send(Buffer.from('x'))
    const b = await openDataStream('127.0.0.1', port, 'integrity', token, new Uint8Array())
    const c = await openDataStream('127.0.0.1', port, 'integrity', randomBytes(32), new Uint8Array())
    // the reused and the unknown token are closed by the parent: their reads end
    for (const ds of [b, c]) { for await (const _ of ds) { /* nothing arrives */ } }
    expect(streams).toHaveLength(1)
    a.abort(new Error('done'))
  })
})

describe('data channel bounds', () => {
  /** a connected socket pair on loopback */
  async function socketPair (): Promise<{ a: Socket, b: Socket }> {
    const srv = createServer()
    srv.listen(0, '127.0.0.1'); await once(srv, 'listening')
    const accepted = once(srv, 'connection')
    const a = connect((srv.address() as { port: number }).port, '127.0.0.1')
    const [b] = await accepted as [Socket]
    await once(a, 'connect')
    cleanup.push(() => { a.destroy(); b.destroy(); srv.close() })
    return { a, b }
  }

  /** secure streams over a socket pair: `sender` as a parent's child would write, `receiver` with `limits` */
  async function securePair (limits: DataStreamLimits, push = false): Promise<{ sender: DataStream, receiver: DataStream, raw: Socket }> {
    const { a, b } = await socketPair()
    const secret = randomBytes(32); const token = randomBytes(32)
    return { sender: new DataStream(a, deriveKeys(secret, token, 'child')), receiver: new DataStream(b, deriveKeys(secret, token, 'parent'), push, limits), raw: a }
  }

  async function ended (ds: DataStream): Promise<Error | undefined> {
    try { for await (const _ of ds) { /* drain */ } } catch (err) { return err as Error }
    return undefined
  }

  it('a parent refuses a record larger than its request bound before allocating it', async () => {
    const { raw, receiver } = await securePair({ recordBytes: PIECE_REQUEST_BUFFER_BYTES, queueBytes: PIECE_REQUEST_BUFFER_BYTES })
    const head = Buffer.alloc(4); head.writeUInt32BE(1024 * 1024 + 16)
    raw.write(head)
    const err = await ended(receiver)
    expect(err?.name).toBe('PeerViolationError')
  })

  it('bytes waiting for a parent\'s reader are bounded', async () => {
    const { sender, receiver } = await securePair({ recordBytes: PIECE_REQUEST_BUFFER_BYTES, queueBytes: PIECE_REQUEST_BUFFER_BYTES })
    // records within the bound, but more of them than the reader may be behind on
    for (let i = 0; i < 3; i++) sender.send(randomBytes(PIECE_REQUEST_BUFFER_BYTES / 2))
    await new Promise(resolve => setTimeout(resolve, 200))
    const err = await ended(receiver)
    expect(err?.name).toBe('PeerViolationError')
  })

  it('a half-sent record is dropped after the stall time', async () => {
    const { raw, receiver } = await securePair({ stallMs: 300, idleMs: 60_000 })
    const head = Buffer.alloc(4); head.writeUInt32BE(1024 * 1024 + 16)
    raw.write(Buffer.concat([head, randomBytes(512 * 1024)]))
    const t0 = Date.now()
    const err = await ended(receiver)
    expect(err?.name).toBe('PeerViolationError')
    expect(err?.message).toMatch(/stalled/)
    expect(Date.now() - t0).toBeLessThan(3000)
  })

  it('a channel with no byte either way is closed after the idle time', async () => {
    const { receiver } = await securePair({ stallMs: 60_000, idleMs: 300 })
    const t0 = Date.now()
    const err = await ended(receiver)
    expect(err?.message).toMatch(/idle/)
    expect(Date.now() - t0).toBeLessThan(3000)
  })

  it('a wrong token is closed at once and gets no byte', async () => {
    const server = new DataChannelServer(() => { throw new Error('no stream expected') }, new Set(['secure']))
    const port = await server.listen(0, '127.0.0.1')
    cleanup.push(async () => { await server.close() })
    server.offer('secure', 'peer')
    const s = connect(port, '127.0.0.1')
    cleanup.push(() => { s.destroy() })
    let got = 0
    s.on('data', (b: Buffer) => { got += b.byteLength })
    s.on('error', () => {})
    await once(s, 'connect')
    const t0 = Date.now()
    s.write(randomBytes(32))
    await once(s, 'close')
    expect(Date.now() - t0).toBeLessThan(1000)
    expect(got).toBe(0)
  })

  it('one host gets DATA_CHANNEL_MAX_PER_PEER tokens and channels; others still get theirs', async () => {
    const server = new DataChannelServer(() => {}, new Set(['secure']))
    await server.listen(0, '127.0.0.1')
    cleanup.push(async () => { await server.close() })
    for (let i = 0; i < DATA_CHANNEL_MAX_PER_PEER; i++) server.offer('secure', 'greedy')
    expect(() => server.offer('secure', 'greedy')).toThrow(/too many data channels/)
    expect(server.offer('secure', 'other').token).toHaveLength(32)
  })

  it('the listener binds the node\'s listen IP, not every interface', async () => {
    const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await node.stop() })
    const server = await servePieces(node, { log: silentLogger, dataChannel: true, provider: { getPiece: async () => null } })
    expect(server.dataHost).toBe('127.0.0.1')
    await server.close()
  })
})

describe('data channel write stall', () => {
  it('a peer that reads nothing of what is queued for it loses the channel after the stall time', async () => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1'); await once(srv, 'listening')
    const accepted = once(srv, 'connection')
    const a = connect((srv.address() as { port: number }).port, '127.0.0.1')
    const [b] = await accepted as [Socket]
    b.pause() // reads nothing
    cleanup.push(() => { a.destroy(); b.destroy(); srv.close() })
    await once(a, 'connect')
    const sender = new DataStream(a, undefined, false, { writeStallMs: 400, idleMs: 60_000 })
    for (let i = 0; i < 64; i++) sender.send(randomBytes(1024 * 1024))
    const t0 = Date.now()
    await new Promise(resolve => a.once('close', resolve))
    expect(Date.now() - t0).toBeLessThan(5000)
  })
})

describe('a child that breaks a bound', () => {
  it('is refused piece streams and data channels by that parent for a while; others are not', async () => {
    const p = await parent(true)
    const bad = await child()
    const ask = async (node: Libp2p): Promise<{ port?: number, token?: Uint8Array, refused?: string }> => await askChannel(node, p, 1)
    const offer = await ask(bad)
    // the token, then a record header announcing 1 MiB: a parent accepts requests only
    const sock = connect(offer.port!, '127.0.0.1')
    sock.on('error', () => {})
    await once(sock, 'connect')
    const head = Buffer.alloc(4); head.writeUInt32BE(1024 * 1024 + 16)
    sock.write(Buffer.concat([offer.token!, head]))
    await new Promise(resolve => sock.once('close', resolve))
    await new Promise(resolve => setTimeout(resolve, 50))
    expect((await ask(bad)).refused).toMatch(/broke a piece protocol bound/)
    const banned = await PieceConnection.open(bad, p.getMultiaddrs(), { channel: 'secure' })
    cleanup.push(() => { banned.close() })
    expect(banned.channel).toBe('stream')
    await expect(fetchAll(banned)).rejects.toThrow()
    const good = await PieceConnection.open(await child(), p.getMultiaddrs(), { channel: 'secure' })
    cleanup.push(() => { good.close() })
    expect(good.channel).toBe('secure')
    expect((await fetchAll(good)).ok).toHaveLength(COUNT)
  })
})

describe('a child that reads nothing of its answers', () => {
  it('loses its channel each time, and is refused only at the third time (a congested uplink stalls one flow once)', async () => {
    const p = await parent({ integrity: true, writeStallMs: 300 })
    const c = await child()
    const ask = async (): Promise<{ port?: number, token?: Uint8Array, refused?: string }> => await askChannel(c, p, 2)
    /**
     * one channel that asks for 256 pieces and reads none of them for 1 s (the parent's stall time is
     * 300 ms), then reads on: resolves when the channel has closed (a paused socket sees the parent's
     * reset only once it reads); a channel the parent kept open would stream on to the idle time
     */
    const stall = async (offer: { port?: number, token?: Uint8Array }): Promise<number> => {
      // 64 MiB asked: more than loopback's socket buffers (tcp_rmem up to 32 MiB) take
      const sock = await deafSocket(offer, 4, COUNT)
      const t0 = Date.now()
      const closed = new Promise(resolve => sock.once('close', resolve))
      await new Promise(resolve => setTimeout(resolve, 1000))
      sock.resume()
      await closed
      return Date.now() - t0
    }
    for (let strike = 1; strike <= 3; strike++) {
      const offer = await ask()
      expect(offer.refused).toBeUndefined()
      expect(await stall(offer)).toBeLessThan(5000)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    expect((await ask()).refused).toMatch(/broke a piece protocol bound/)
  }, 30_000)
})

describe('upload budget', () => {
  /** a parent with `budget` serving `pieces` on integrity data channels; `served` counts pieces it read */
  async function budgetParent (budget: number, hostBudget?: number): Promise<{ node: Libp2p, served: () => number }> {
    const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    cleanup.push(async () => { await node.stop() })
    let served = 0
    await servePieces(node, {
      log: silentLogger, dataChannel: { integrity: true }, uploadBufferBytes: budget, ...(hostBudget != null ? { hostUploadBufferBytes: hostBudget } : {}),
      provider: { getPiece: async (_t, n) => { served++; return { data: pieces[n % COUNT]!, digest: digests[n % COUNT]! } } }
    })
    return { node, served: () => served }
  }

  /** a child on a data channel of `node` that asks `requests` x 64 pieces and reads nothing */
  async function deafChild (node: Libp2p, requests: number): Promise<Socket> {
    return await deafSocket(await askChannel(await child(), node, 2), requests)
  }

  /** pieces a parent with `budget` reads, within 1 s, for a child on a data channel that reads nothing */
  async function servedToDeafChild (budget: number, hostBudget?: number): Promise<number> {
    const { node, served } = await budgetParent(budget, hostBudget)
    await deafChild(node, 2)
    await new Promise(resolve => setTimeout(resolve, 1000))
    return served()
  }

  it('a child whose answers wait for upload room hears busy frames (a busy parent, not a hung one), then gets its pieces', async () => {
    const { node } = await budgetParent(1024 * 1024)
    // a child that reads nothing fills the parent's whole upload budget
    const deaf = await deafChild(node, 1)
    await new Promise(resolve => setTimeout(resolve, 500))
    // another child's request waits for room: it gets busy frames, no piece
    const other = await child()
    const conn = await PieceConnection.open(other, node.getMultiaddrs(), { channel: 'integrity' })
    cleanup.push(() => { conn.close() })
    const got: number[] = []
    const done = conn.request({ taskId: 't', numbers: [0, 1], priority: Priority.BACKGROUND }, r => { got.push(r.n) })
    await new Promise(resolve => setTimeout(resolve, 2500))
    expect(got).toEqual([])
    expect(conn.busy).toBeGreaterThanOrEqual(1)
    expect(conn.received).toBe(conn.busy * 41)
    // room again (the deaf child goes): the pieces come
    deaf.destroy()
    await done
    expect(got).toEqual([0, 1])
  })

  it('a child that reads nothing makes a parent read only what its upload budget allows (plus what the kernel buffers)', async () => {
    const bounded = await servedToDeafChild(1024 * 1024)
    const unbounded = await servedToDeafChild(Infinity)
    // 256 KiB pieces: 1 MiB of budget plus the kernel's socket buffers, against the 8 MiB high-water mark
    expect(bounded).toBeLessThan(unbounded)
    expect(bounded).toBeLessThanOrEqual(40)
  })

  it('a child that reads nothing holds at most its host\'s share of the budget; another child is served at once', async () => {
    const capped = await servedToDeafChild(Infinity, 1024 * 1024)
    const uncapped = await servedToDeafChild(Infinity, Infinity)
    expect(capped).toBeLessThan(uncapped)
    expect(capped).toBeLessThanOrEqual(40)
    // the deaf child holds its share: a second child's request is answered with no busy frame
    const { node } = await budgetParent(Infinity, 1024 * 1024)
    await deafChild(node, 2)
    await new Promise(resolve => setTimeout(resolve, 500))
    const conn = await PieceConnection.open(await child(), node.getMultiaddrs(), { channel: 'integrity' })
    cleanup.push(() => { conn.close() })
    const got: number[] = []
    await conn.request({ taskId: 't', numbers: [0, 1, 2, 3], priority: Priority.BACKGROUND }, r => { got.push(r.n) })
    expect(got).toEqual([0, 1, 2, 3])
    expect(conn.busy).toBe(0)
  })
})
