/**
 * Reading a task while it downloads, end to end: real scheduler, seed and daemon processes on 127.0.0.1,
 * a rate-limited local origin, reads through the daemon's local API (GET /api/v1/tasks/:id/content),
 * which every consumer's read goes through (the reader, packages/peer/src/reader.ts).
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { pieceLayout } from '@guoce/content'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { startOrigin, startCluster, freePort, stopAll, sha, until, NODE, ROOT, type Origin, type Cluster } from '@guoce/testkit'
import { createNode, readClusterKey, PieceConnection, Priority, type PieceResult } from '@guoce/transfer'
import { multiaddr } from '@multiformats/multiaddr'

const MiB = 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
  await stopAll()
})

async function setup (o: { files: Record<string, Buffer>, rate: number, daemonArgs?: string[] }): Promise<{ origin: Origin, cluster: Cluster, api: string }> {
  const origin = await startOrigin({ files: o.files, rate: o.rate })
  cleanups.push(async () => { await origin.close() })
  const cluster = await startCluster({ daemons: 1, ...(o.daemonArgs != null ? { daemonArgs: o.daemonArgs } : {}) })
  cleanups.push(async () => { await cluster.close() })
  return { origin, cluster, api: cluster.daemons[0]!.api }
}

/** POST the task: its id and access token */
async function start (api: string, body: { url: string, digest?: string, ranged?: boolean, pieceLength?: number }): Promise<{ taskId: string, access: string }> {
  const res = await fetch(`${api}/api/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const j = await res.json() as { taskId: string, access: string }
  expect(res.status, JSON.stringify(j)).toBe(200)
  return j
}

async function progress (api: string, taskId: string): Promise<{ state: string, piecesDone: number, pieceCount?: number }> {
  return await (await fetch(`${api}/api/v1/tasks/${taskId}`)).json() as { state: string, piecesDone: number, pieceCount?: number }
}

async function metric (api: string, name: string): Promise<number> {
  const text = await (await fetch(`${api}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' '))
  return line == null ? NaN : Number(line.split(' ').pop())
}

/**
 * `size` bytes that no shifted copy of itself matches: a random 1 MiB block repeated, with every 4 KiB
 * block stamped with its own offset (cheap to make at 1 GiB, and a read from a wrong offset differs).
 */
function stamped (size: number): Buffer {
  const block = randomBytes(MiB)
  const b = Buffer.allocUnsafe(size)
  for (let off = 0; off < size; off += MiB) block.copy(b, off, 0, Math.min(MiB, size - off))
  for (let off = 0; off + 8 <= size; off += 4096) b.writeDoubleLE(off, off)
  return b
}

/**
 * Read `path` of the local API to its end; `onFirst` runs when the first body bytes are in
 * (its result is kept). The status, the body, and what onFirst returned.
 */
async function readAll<T> (url: string, headers: Record<string, string>, onFirst: () => Promise<T>, signal?: AbortSignal): Promise<{ status: number, body: Buffer, first: T | undefined, firstMs: number }> {
  const t0 = Date.now()
  const res = await fetch(url, { headers, ...(signal != null ? { signal } : {}) })
  const parts: Buffer[] = []
  let first: T | undefined
  let firstMs = -1
  for await (const chunk of res.body!) {
    if (firstMs < 0) { firstMs = Date.now() - t0; first = await onFirst() }
    parts.push(Buffer.from(chunk as Uint8Array))
  }
  return { status: res.status, body: Buffer.concat(parts), first, firstMs }
}

describe('ranged reads fetch only what is read', () => {
  it('a 4 KiB read at a random offset of a 1 GiB task that no host has returns the right bytes after fetching at most two pieces; a second host reads it from the swarm', async () => {
    const GiB = 1024 * MiB
    const file = stamped(GiB)
    const origin = await startOrigin({ files: { 'big.bin': file }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 2 })
    cleanups.push(async () => { await cluster.close() })
    const [a, b] = cluster.daemons.map(d => d.api) as [string, string]
    const { pieceLength } = pieceLayout(GiB)
    const url = `${origin.url}/big.bin`
    const read = async (api: string, offset: number): Promise<Response> => {
      const { taskId, access } = await start(api, { url, ranged: true })
      return await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access, range: `bytes=${offset}-${offset + 4095}` } })
    }
    const offset = Math.floor(Math.random() * (GiB - 4096))
    const res = await read(a, offset)
    expect(res.status).toBe(206)
    expect(Buffer.from(await res.arrayBuffer()).equals(file.subarray(offset, offset + 4096))).toBe(true)
    // a read within one piece, or across two: at most two pieces crossed the origin link (plus the
    // one-byte probes that name the version and learn the length) and the link between peers
    const pieces = Math.floor((offset + 4095) / pieceLength) - Math.floor(offset / pieceLength) + 1
    const fromOrigin = origin.totalSent()
    expect(fromOrigin).toBeLessThanOrEqual(pieces * pieceLength + 16)
    expect(fromOrigin).toBeGreaterThanOrEqual(4096)
    expect(await metric(a, 'guoce_peer_download_bytes_total{source="peer"}')).toBeLessThanOrEqual(pieces * pieceLength)
    // the read was timed: one on-demand read in the latency histogram, within its buckets
    expect(await metric(a, 'guoce_peer_read_seconds_count{priority="on-demand"}')).toBe(1)
    expect(await metric(a, 'guoce_peer_read_seconds_bucket{le="60",priority="on-demand"}')).toBe(1)
    process.stderr.write(`read.spec: 4 KiB at ${offset} of 1 GiB (${pieceLength / MiB} MiB pieces): origin sent ${fromOrigin} bytes\n`)

    // another host reads the same bytes: from the swarm, the origin sends nothing more but its probe
    const again = await read(b, offset)
    expect(again.status).toBe(206)
    expect(Buffer.from(await again.arrayBuffer()).equals(file.subarray(offset, offset + 4096))).toBe(true)
    expect(origin.totalSent()).toBeLessThanOrEqual(fromOrigin + 16)
  })

  it('a ranged task fetches nothing unread; a whole download joining it fetches the rest, each piece from the origin once', async () => {
    const file = stamped(48 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': file }, validators: 'etag', rate: 32 * MiB })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 1 })
    cleanups.push(async () => { await cluster.close() })
    const api = cluster.daemons[0]!.api
    const url = `${origin.url}/f.bin`
    const { taskId, access } = await start(api, { url, ranged: true })
    const at = 40 * MiB + 123
    const part = await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access, range: `bytes=${at}-${at + 99}` } })
    expect(part.status).toBe(206)
    expect(Buffer.from(await part.arrayBuffer()).equals(file.subarray(at, at + 100))).toBe(true)
    // lazy: nothing else is fetched while nobody reads
    await new Promise(resolve => setTimeout(resolve, 500))
    expect(origin.totalSent()).toBeLessThanOrEqual(MiB + 16)
    expect((await progress(api, taskId)).piecesDone).toBe(1)
    // the same task asked for whole: it completes, byte-identical, each piece fetched from the origin once
    await start(api, { url })
    await until(async () => (await progress(api, taskId)).state === 'succeeded', 'the whole download to finish')
    const all = Buffer.from(await (await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access } })).arrayBuffer())
    expect(sha(all)).toBe(sha(file))
    expect(origin.totalSent()).toBeLessThanOrEqual(file.length + 32)
  })
})

describe('a ranged task that names its piece length', () => {
  it('moves only pieces of that length: a read costs the origin and the swarm one such piece; a whole download keeps the layout', async () => {
    const KiB = 1024
    const file = stamped(8 * MiB)
    const origin = await startOrigin({ files: { 'blob.bin': file }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 2 })
    cleanups.push(async () => { await cluster.close() })
    const [a, b] = cluster.daemons.map(d => d.api) as [string, string]
    const url = `${origin.url}/blob.bin`
    const body = { url, ranged: true, pieceLength: 64 * KiB }
    // a bad length is refused with 400; a named length is another task than the default layout's
    for (const bad of [1000, 32 * KiB, 32 * MiB, 1.5]) {
      const res = await fetch(`${a}/api/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url, ranged: true, pieceLength: bad }) })
      expect(res.status, `pieceLength ${bad}`).toBe(400)
    }
    const t = await start(a, body)
    expect(t.taskId).not.toBe((await start(a, { url, ranged: true })).taskId)
    const at = 5 * MiB + 64 * KiB + 1000 // inside one 64 KiB piece
    const sentBefore = origin.totalSent()
    const res = await fetch(`${a}/api/v1/tasks/${t.taskId}/content`, { headers: { 'x-guoce-access': t.access, range: `bytes=${at}-${at + 99}` } })
    expect(res.status).toBe(206)
    expect(Buffer.from(await res.arrayBuffer()).equals(file.subarray(at, at + 100))).toBe(true)
    const p = await progress(a, t.taskId)
    expect(p.pieceCount).toBe(128)
    expect(p.piecesDone).toBe(1)
    expect(origin.totalSent() - sentBefore).toBeLessThanOrEqual(64 * KiB + 16)
    // another host, the same read: one 64 KiB piece from the swarm, nothing more from the origin
    const sentAfterA = origin.totalSent()
    const tb = await start(b, body)
    expect(tb.taskId).toBe(t.taskId)
    const rb = await fetch(`${b}/api/v1/tasks/${tb.taskId}/content`, { headers: { 'x-guoce-access': tb.access, range: `bytes=${at}-${at + 99}` } })
    expect(Buffer.from(await rb.arrayBuffer()).equals(file.subarray(at, at + 100))).toBe(true)
    expect(await metric(b, 'guoce_peer_download_bytes_total{source="peer"}')).toBe(64 * KiB)
    expect(origin.totalSent()).toBeLessThanOrEqual(sentAfterA + 16)
    // the whole content asked for: same task, same layout, byte-identical
    await start(b, { url, pieceLength: 64 * KiB })
    await until(async () => (await progress(b, t.taskId)).state === 'succeeded', 'the whole download to finish')
    const all = Buffer.from(await (await fetch(`${b}/api/v1/tasks/${t.taskId}/content`, { headers: { 'x-guoce-access': tb.access } })).arrayBuffer())
    expect(sha(all)).toBe(sha(file))
    expect((await progress(b, t.taskId)).pieceCount).toBe(128)
  })
})

describe('a hostile child\'s fetch requests at the seed', () => {
  it('a piece outside the layout and a task the seed is not fetching are refused at once; a piece of the task is fetched once and served right', async () => {
    const KiB = 1024
    const file = stamped(8 * MiB)
    const origin = await startOrigin({ files: { 'blob.bin': file }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 1 })
    cleanups.push(async () => { await cluster.close() })
    const api = cluster.daemons[0]!.api
    // an honest ranged read: the seed now fetches this task lazily
    const t = await start(api, { url: `${origin.url}/blob.bin`, ranged: true, pieceLength: 64 * KiB })
    const res = await fetch(`${api}/api/v1/tasks/${t.taskId}/content`, { headers: { 'x-guoce-access': t.access, range: 'bytes=0-99' } })
    expect(Buffer.from(await res.arrayBuffer()).equals(file.subarray(0, 100))).toBe(true)
    // a cluster member built from our own packages, talking to the seed directly
    const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'], clusterKey: await readClusterKey(cluster.clusterKey) })
    cleanups.push(async () => { await node.stop() })
    const conn = await PieceConnection.open(node, (cluster.seeds[0]!.ready.addrs as string[]).map(a => multiaddr(a)), { signal: AbortSignal.timeout(5_000) })
    cleanups.push(async () => { conn.close() })
    const ask = async (taskId: string, n: number): Promise<{ ms: number, r: PieceResult }> => {
      const t0 = Date.now()
      let got: PieceResult | undefined
      await conn.request({ taskId, numbers: [n], priority: Priority.ON_DEMAND, fetch: true }, r => { got = r; if (!('refused' in r)) r.release?.() }, 64 * KiB)
      return { ms: Date.now() - t0, r: got! }
    }
    const beyond = await ask(t.taskId, 1_000_000)
    expect('refused' in beyond.r).toBe(true)
    expect(beyond.ms).toBeLessThan(2_000) // not the seed's SEED_HOLD_WAIT_MS (5 s)
    const unknown = await ask(randomBytes(32).toString('hex'), 3)
    expect('refused' in unknown.r).toBe(true)
    expect(unknown.ms).toBeLessThan(2_000)
    // a piece of the task nobody fetched yet: fetched once from the origin and served as the origin's bytes
    const sent = origin.totalSent()
    const piece = await ask(t.taskId, 77)
    expect('refused' in piece.r).toBe(false)
    if (!('refused' in piece.r)) expect(Buffer.from(piece.r.data).equals(file.subarray(77 * 64 * KiB, 78 * 64 * KiB))).toBe(true)
    expect(origin.totalSent() - sent).toBeLessThanOrEqual(64 * KiB + 16)
  })
})

describe('empty content', () => {
  it('a pinned empty file (the origin answers its Range with 416) completes, whole or ranged', async () => {
    const origin = await startOrigin({ files: { 'empty.bin': Buffer.alloc(0) }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 2 })
    cleanups.push(async () => { await cluster.close() })
    for (const [i, ranged] of [[0, false], [1, true]] as const) {
      const api = cluster.daemons[i]!.api
      const { taskId, access } = await start(api, { url: `${origin.url}/empty.bin`, ranged })
      const res = await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access } })
      expect(res.status).toBe(200)
      expect((await res.arrayBuffer()).byteLength).toBe(0)
    }
  })
})

describe('a corrupt piece during a ranged read', () => {
  it('is detected and fetched again: the read returns the right bytes and the peer is blamed', async () => {
    const file = stamped(64 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': file }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const cluster = await startCluster({ daemons: 1 })
    cleanups.push(async () => { await cluster.close() })
    const api = cluster.daemons[0]!.api
    const url = `${origin.url}/f.bin`
    // a member of the cluster that claims every piece and answers each request with random bytes
    const evil = spawn(NODE, [join(ROOT, 'test', 'fixtures', 'evil-peer.js'), cluster.schedulerAddr, url, cluster.clusterKey], { stdio: ['ignore', 'pipe', 'inherit'] })
    cleanups.push(async () => { evil.kill('SIGKILL') })
    let served = 0
    await new Promise<void>(resolve => {
      createInterface({ input: evil.stdout }).on('line', l => {
        const m = JSON.parse(l)
        if (m.event === 'ready') resolve()
        if (m.event === 'served') served = m.served
      })
    })
    const { taskId, access } = await start(api, { url, ranged: true })
    // ranges of several pieces each: the reader asks both parents (the seed and the liar) at once
    for (const [from, len] of [[3 * MiB + 5, 8 * MiB], [40 * MiB, 6 * MiB + 1], [20 * MiB - 7, 4 * MiB]] as const) {
      const res = await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access, range: `bytes=${from}-${from + len - 1}` } })
      expect(res.status).toBe(206)
      expect(sha(Buffer.from(await res.arrayBuffer()))).toBe(sha(file.subarray(from, from + len)))
    }
    expect(served).toBeGreaterThan(0)
    expect(await metric(api, 'guoce_peer_blamed_parents_total')).toBeGreaterThanOrEqual(1)
  })
})

describe('reading a task while it downloads', () => {
  it('8 concurrent streaming reads of one blob each get their first byte before the task is complete, and all are byte-identical to the origin', async () => {
    // 24 pieces of 1 MiB at 6 MiB/s from the origin: about 4 s for the whole task
    const file = randomBytes(24 * MiB)
    const { origin, api } = await setup({ files: { 'blob.bin': file }, rate: 6 * MiB })
    const t0 = Date.now()
    const { taskId, access } = await start(api, { url: `${origin.url}/blob.bin` })
    // what the origin had sent when a stream's first bytes were in (read here, in this process: no
    // request to the daemon that could itself be late)
    const reads = await Promise.all(Array.from({ length: 8 }, async () =>
      await readAll(`${api}/api/v1/tasks/${taskId}/content`, { 'x-guoce-access': access }, async () => origin.sent['blob.bin'] ?? 0)))
    const total = Date.now() - t0
    process.stderr.write(`read.spec: per stream (first ms, origin MiB then): ${reads.map(r => `${r.firstMs}/${((r.first ?? 0) / MiB).toFixed(1)}`).join(' ')}; total ${total} ms\n`)
    for (const r of reads) {
      expect(r.status).toBe(200)
      // the first bytes were in before the origin had even sent the whole blob: the task was not complete
      expect(r.first!).toBeLessThan(file.length)
      expect(r.body.length).toBe(file.length)
      expect(sha(r.body)).toBe(sha(file))
    }
    await until(async () => (await progress(api, taskId)).state === 'succeeded', 'the task to succeed')
    const firsts = reads.map(r => r.firstMs).sort((a, b) => a - b)
    const sent = reads.map(r => Math.round(r.first! / MiB)).sort((a, b) => a - b)
    process.stderr.write(`read.spec: 8 streams of 24 MiB at 6 MiB/s: first byte after ${firsts[0]}-${firsts[7]} ms (origin had sent ${sent[0]}-${sent[7]} MiB), all done after ${total} ms\n`)
  })

  it('a Range read of an incomplete task answers 206 with the right bytes before the task is complete', async () => {
    const file = randomBytes(24 * MiB)
    const { origin, api } = await setup({ files: { 'blob.bin': file }, rate: 6 * MiB })
    const { taskId, access } = await start(api, { url: `${origin.url}/blob.bin` })
    const from = 5 * MiB + 1000
    const to = from + 64 * 1024 + 17 // crosses no piece boundary... and one that does:
    const from2 = 8 * MiB - 100; const to2 = 8 * MiB + 99
    const [a, b] = await Promise.all([[from, to], [from2, to2]].map(async ([s, e]) => {
      const res = await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access, range: `bytes=${s}-${e}` } })
      const body = Buffer.from(await res.arrayBuffer())
      return { res, body, sent: origin.sent['blob.bin'] ?? 0 }
    }))
    for (const [r, s, e] of [[a!, from, to], [b!, from2, to2]] as const) {
      expect(r.res.status).toBe(206)
      expect(r.res.headers.get('content-range')).toBe(`bytes ${s}-${e}/${file.length}`)
      expect(r.body.equals(file.subarray(s, e + 1))).toBe(true)
      // the whole answer was in before the origin had sent the whole blob: the task was not complete
      expect(r.sent).toBeLessThan(file.length)
    }
  })

  it('a read whose pieces cannot be had fails after a bounded time with a clear error, while other reads go on', async () => {
    const file = randomBytes(4 * MiB)
    const { origin, api } = await setup({ files: { 'ok.bin': file }, rate: 2 * MiB, daemonArgs: ['--read-timeout', '2s'] })
    const digest = (b: Buffer): string => 'sha256:' + sha(b)
    // an origin that never answers (digest-named: the daemon does not probe it; the seed waits on it)
    const hung = await start(api, { url: `${origin.url}/hang`, digest: digest(randomBytes(16)) })
    // an origin that is down: nothing listens on its port
    const down = await start(api, { url: `http://127.0.0.1:${await freePort()}/gone.bin`, digest: digest(randomBytes(16)) })
    const ok = await start(api, { url: `${origin.url}/ok.bin` })
    const t0 = Date.now()
    const [h, d, good] = await Promise.all([
      fetch(`${api}/api/v1/tasks/${hung.taskId}/content`, { headers: { 'x-guoce-access': hung.access } }).then(async r => ({ status: r.status, body: await r.json() as any, ms: Date.now() - t0 })),
      fetch(`${api}/api/v1/tasks/${down.taskId}/content`, { headers: { 'x-guoce-access': down.access } }).then(async r => ({ status: r.status, body: await r.json() as any, ms: Date.now() - t0 })),
      fetch(`${api}/api/v1/tasks/${ok.taskId}/content`, { headers: { 'x-guoce-access': ok.access } }).then(async r => ({ status: r.status, body: Buffer.from(await r.arrayBuffer()) }))
    ])
    expect(h.status).toBe(504)
    expect(h.body.error).toMatchObject({ name: 'ReadTimeoutError', code: 'ERR_READ_TIMEOUT' })
    expect(h.body.error.message).toMatch(/waited 2000 ms for the task's layout/)
    expect(h.ms).toBeGreaterThanOrEqual(1_900)
    expect(h.ms).toBeLessThan(10_000)
    // the origin that is down: the read fails within its bound, with the task's own error once the
    // task failed (sources are tried again first), else with ReadTimeoutError
    expect(d.ms).toBeLessThan(10_000)
    expect([502, 504]).toContain(d.status)
    expect(['OriginUnreachableError', 'ReadTimeoutError']).toContain(d.body.error.name)
    await until(async () => (await progress(api, down.taskId)).state === 'failed', 'the task of the origin that is down to fail')
    const after = await fetch(`${api}/api/v1/tasks/${down.taskId}/content`, { headers: { 'x-guoce-access': down.access } })
    expect(after.status).toBe(502)
    expect(((await after.json()) as any).error.name).toBe('OriginUnreachableError')
    process.stderr.write(`read.spec: origin down: first read ${d.status} ${d.body.error.name as string} after ${d.ms} ms; task failed after ${Date.now() - t0} ms\n`)
    expect(good.status).toBe(200)
    expect(sha(good.body)).toBe(sha(file))
  })

  it('an aborted read stops waiting while the download goes on', async () => {
    const file = randomBytes(16 * MiB)
    const { origin, api } = await setup({ files: { 'blob.bin': file }, rate: 2 * MiB })
    const { taskId, access } = await start(api, { url: `${origin.url}/blob.bin` })
    const ac = new AbortController()
    const res = await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access }, signal: ac.signal })
    expect(res.status).toBe(200)
    const it = res.body![Symbol.asyncIterator]()
    expect((await it.next()).done).toBe(false)
    // the stream waits on the pieces ahead of it
    await until(async () => await metric(api, 'guoce_peer_reads_waiting') > 0, 'the read to wait for pieces')
    ac.abort()
    await it.return?.().catch(() => {})
    await until(async () => await metric(api, 'guoce_peer_reads_waiting') === 0, 'the aborted read to stop waiting', 5_000)
    // the download itself goes on to the end
    expect(origin.sent['blob.bin']).toBeLessThan(file.length)
    await until(async () => (await progress(api, taskId)).state === 'succeeded', 'the download to finish')
    const all = Buffer.from(await (await fetch(`${api}/api/v1/tasks/${taskId}/content`, { headers: { 'x-guoce-access': access } })).arrayBuffer())
    expect(sha(all)).toBe(sha(file))
  })
})
