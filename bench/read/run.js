// bench/read: the reader against what it replaces, in one process tree.
//  A. Time to first byte of a 1 MiB range at a random offset of a 1 GiB task: cold (only the origin has
//     it: a fresh ranged task on daemon A) and warm (daemon B reads the range A just read: from the
//     swarm), against a direct HTTP Range request to the origin from A's host, over the same links:
//     network namespaces on a bridge (origin, scheduler, seed, peers a and b), every host's link shaped
//     both ways with tc tbf at --mbit (1 Gbit/s by default). Twice: with the default layout (1 MiB pieces
//     for 1 GiB) and with the pieces the lazy mount's blob tasks name (TaskRequest.pieceLength, 128 KiB).
//  B. Random 4 KiB reads per second from a complete local task: through the reader (in process, the
//     contract every consumer calls) and through the local API (HTTP Range, what another process gets),
//     against pread of the same file from Node, same offsets and concurrency.
//  C. 4 KiB reads at random offsets during a full download of the task (--during-rate-mib): p99 latency
//     against the time one piece takes on the link (loopback, the origin's token bucket as the link).
// usage: sudo node bench/read/run.js [--samples 8] [--mbit 1000] [--seconds 3] [--concurrency 16] [--during-rate-mib 12]
import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { mkdtemp, open, rm, writeFile, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawn, execFile } from 'node:child_process'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { request, Pool, Agent } from 'undici'
import { startOrigin, startCluster, startGuoce, createNetwork, stopAll, until, NODE } from '@guoce/testkit'
import { openStore } from '@guoce/store'
import { pieceLayout, sha256, taskIdFrom } from '@guoce/content'
import { taskReader, storedSource } from '@guoce/peer'
import { stampedFrom } from './stamped.js'

const { values } = parseArgs({ options: { samples: { type: 'string', default: '8' }, mbit: { type: 'string', default: '1000' }, seconds: { type: 'string', default: '3' }, concurrency: { type: 'string', default: '16' }, 'during-rate-mib': { type: 'string', default: '12' } } })
const MiB = 1024 * 1024
const GiB = 1024 * MiB
const samples = Number(values.samples)
const mbit = Number(values.mbit)
const seconds = Number(values.seconds)
const conc = Number(values.concurrency)
const here = dirname(fileURLToPath(import.meta.url))
const exec = promisify(execFile)
const log = (m) => process.stderr.write(`[read] ${m}\n`)
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
const p99 = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] }

/** ms until the first body byte, and until the whole body; the body checked against `want` */
async function timed (url, init, want) {
  const t0 = performance.now()
  const res = await request(url, init)
  let first = -1
  const parts = []
  for await (const c of res.body) { if (first < 0) first = performance.now() - t0; parts.push(c) }
  const body = Buffer.concat(parts)
  if (want != null && !body.equals(want)) throw new Error(`wrong bytes from ${url} (status ${res.statusCode})`)
  return { first, all: performance.now() - t0, status: res.statusCode }
}

async function post (api, body, dispatcher) {
  const res = await request(`${api}/api/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), ...(dispatcher != null ? { dispatcher } : {}) })
  const j = await res.body.json()
  if (res.statusCode !== 200) throw new Error(`POST /api/v1/tasks: ${JSON.stringify(j)}`)
  return j
}

/** random 4 KiB reads for `seconds` at `conc` at once: reads per second and each read's latency */
async function hammer (size, readAt) {
  const lat = []
  let n = 0
  const end = performance.now() + seconds * 1000
  await Promise.all(Array.from({ length: conc }, async () => {
    while (performance.now() < end) {
      const off = Math.floor(Math.random() * (size - 4096))
      const t = performance.now()
      await readAt(off)
      lat.push(performance.now() - t)
      n++
    }
  }))
  return { per_s: Math.round(n / seconds), p99_ms: +p99(lat).toFixed(3) }
}

const out = { benchmark: 'read', mbit, samples }
const tmp = await mkdtemp(join(tmpdir(), 'guoce-bench-read-'))
let net
let originProc
const cleanup = () => { try { originProc?.kill('SIGKILL') } catch {} ; try { net?.close() } catch {} }
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.once(sig, () => { cleanup(); void stopAll().finally(() => process.exit(130)) })
try {
  // A: time to first byte, over shaped links between namespaces
  log(`network: origin, scheduler, seed, peers a and b on a bridge, every link ${mbit} Mbit/s both ways`)
  net = createNetwork(['origin', 'sched', 'seed', 'a', 'b'], { mbit })
  const block = randomBytes(MiB)
  await writeFile(join(tmp, 'block'), block)
  const file = stampedFrom(block, GiB)
  originProc = spawn('ip', ['netns', 'exec', net.ns('origin'), NODE, join(here, 'origin.js'), net.ip('origin'), join(tmp, 'block'), String(GiB)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const originLines = createInterface({ input: originProc.stdout })[Symbol.asyncIterator]()
  const url = JSON.parse((await originLines.next()).value).url
  const originSent = async () => { originProc.stdin.write('stats\n'); return JSON.parse((await originLines.next()).value).sent }
  const sched = await startGuoce(['scheduler', '--listen', `/ip4/${net.ip('sched')}/tcp/0`, '--data', join(tmp, 'sched')], { netns: net.ns('sched') })
  const key = sched.ready.clusterKey
  await startGuoce(['seed', '--scheduler', sched.ready.addr, '--cluster-key', key, '--seed-key', sched.ready.seedKey, '--data', join(tmp, 'seed'), '--listen', `/ip4/${net.ip('seed')}/tcp/0`], { netns: net.ns('seed') })
  const agents = {}
  for (const h of ['a', 'b']) {
    const sock = join(tmp, `${h}.sock`)
    await startGuoce(['daemon', '--scheduler', sched.ready.addr, '--cluster-key', key, '--data', join(tmp, h), '--api', `unix:${sock}`, '--listen', `/ip4/${net.ip(h)}/tcp/0`], { netns: net.ns(h) })
    agents[h] = new Agent({ connect: { socketPath: sock } })
  }
  const api = 'http://localhost'
  /** a direct Range request from host a's namespace (curl: its own time to the first byte and to the last) */
  const direct = async (range, want) => {
    const dst = join(tmp, 'direct.out')
    const { stdout } = await exec('ip', ['netns', 'exec', net.ns('a'), 'curl', '-s', '-o', dst, '-r', range, '-w', '%{http_code} %{time_starttransfer} %{time_total}', url])
    const [code, first, all] = stdout.trim().split(' ')
    if (code !== '206' || !(await readFile(dst)).equals(want)) throw new Error(`direct request: status ${code} or wrong bytes`)
    return { first: Number(first) * 1000, all: Number(all) * 1000 }
  }
  for (const [name, pieceLength] of [['ttfb_1mib', undefined], ['ttfb_1mib_128k_pieces', 128 * 1024]]) {
    const directs = []; const cold = []; const warm = []
    let p2pOrigin = 0
    for (let i = 0; i < samples; i++) {
      const off = Math.floor(Math.random() * (GiB - MiB))
      const want = file.subarray(off, off + MiB)
      const range = `bytes=${off}-${off + MiB - 1}`
      directs.push(await direct(`${off}-${off + MiB - 1}`, want))
      const before = await originSent()
      const body = { url, tag: `${name}-${i}`, ranged: true, ...(pieceLength != null ? { pieceLength } : {}) }
      // cold: a task no host has (its own tag), from the request on
      let t0 = performance.now()
      const ta = await post(api, body, agents.a)
      const c = await timed(`${api}/api/v1/tasks/${ta.taskId}/content`, { headers: { range, 'x-guoce-access': ta.access }, dispatcher: agents.a }, want)
      cold.push({ first: c.first + (performance.now() - t0 - c.all), all: performance.now() - t0 })
      // warm: another host, the same range: from the swarm
      t0 = performance.now()
      const tb = await post(api, body, agents.b)
      const w = await timed(`${api}/api/v1/tasks/${tb.taskId}/content`, { headers: { range, 'x-guoce-access': tb.access }, dispatcher: agents.b }, want)
      warm.push({ first: w.first + (performance.now() - t0 - w.all), all: performance.now() - t0 })
      p2pOrigin += (await originSent()) - before
      log(`${name} sample ${i}: first byte direct ${directs[i].first.toFixed(1)} ms, cold ${cold[i].first.toFixed(1)} ms, warm ${warm[i].first.toFixed(1)} ms`)
    }
    const m = (a, k) => +median(a.map(x => x[k])).toFixed(2)
    out[name] = {
      piece_length: pieceLength ?? pieceLayout(GiB).pieceLength,
      direct_ms: m(directs, 'first'), cold_ms: m(cold, 'first'), warm_ms: m(warm, 'first'),
      direct_all_ms: m(directs, 'all'), cold_all_ms: m(cold, 'all'), warm_all_ms: m(warm, 'all'),
      cold_over_direct: +(m(cold, 'first') / m(directs, 'first')).toFixed(3),
      warm_over_direct: +(m(warm, 'first') / m(directs, 'first')).toFixed(3),
      cold_all_over_direct_all: +(m(cold, 'all') / m(directs, 'all')).toFixed(3),
      warm_all_over_direct_all: +(m(warm, 'all') / m(directs, 'all')).toFixed(3),
      // what the cold and warm reads together cost the origin, per byte read by the cold one (a 1 MiB range
      // at a random offset spans two 1 MiB pieces: 2.0 is the piece granularity; the warm read costs nothing)
      p2p_origin_bytes_per_cold_read_byte: +(p2pOrigin / (samples * MiB)).toFixed(4)
    }
  }
  for (const a of Object.values(agents)) await a.close()
  await stopAll()
  cleanup()
  net = undefined; originProc = undefined

  const cluster = await startCluster({ daemons: 1 })
  try {
    const b = cluster.daemons[0].api
    // B: random 4 KiB reads from a complete local task
    log('random 4 KiB reads')
    const F = 256 * MiB
    const small = randomBytes(F)
    const store = await openStore({ dir: join(tmp, 'store') })
    const taskId = taskIdFrom({ url: 'http://bench/read.bin' })
    const info = { taskId, contentLength: F, ...pieceLayout(F) }
    const t = await store.create(taskId, info, { url: 'http://bench/read.bin' })
    for (let n = 0; n < info.pieceCount; n++) {
      const piece = small.subarray(n * info.pieceLength, Math.min(F, (n + 1) * info.pieceLength))
      await t.writePiece(n, piece, sha256(piece))
    }
    await t.flush()
    const fh = await open(t.dataPath, 'r')
    const buf = Buffer.alloc(4096)
    // warm the page cache for all three
    for (let off = 0; off < F; off += MiB) await fh.read(buf, 0, 4096, off)
    const reader = taskReader({ resolve: async () => storedSource(t) })
    const pread = await hammer(F, async (off) => { const b = Buffer.allocUnsafe(4096); await fh.read(b, 0, 4096, off) })
    const viaReader = await hammer(F, async (off) => { await reader.read({ taskId, offset: off, length: 4096 }) })
    // the same task through daemon B's local API: a whole download of it first
    const o2 = await startOrigin({ files: { 'read.bin': small } })
    const tb = await post(b, { url: `${o2.url}/read.bin` })
    await until(async () => (await (await request(`${b}/api/v1/tasks/${tb.taskId}`)).body.json()).state === 'succeeded', 'the local task', 120_000)
    const pool = new Pool(b, { connections: conc, pipelining: 1 })
    const viaApi = await hammer(F, async (off) => {
      const res = await pool.request({ path: `/api/v1/tasks/${tb.taskId}/content`, method: 'GET', headers: { range: `bytes=${off}-${off + 4095}`, 'x-guoce-access': tb.access } })
      const body = Buffer.from(await res.body.arrayBuffer())
      if (res.statusCode !== 206 || !body.equals(small.subarray(off, off + 4096))) throw new Error(`wrong bytes from the local API at ${off}`)
    })
    await pool.close(); await o2.close(); await fh.close(); await store.close()

    // C: 4 KiB reads at random offsets while a full download of the same task runs on daemon A, the
    // origin's upload being the link; reads start once the download has its first piece
    log('reads during a download')
    const dsize = 96 * MiB
    const dfile = randomBytes(dsize)
    const o3 = await startOrigin({ files: { 'd.bin': dfile }, validators: 'etag', rate: Number(values['during-rate-mib']) * MiB })
    const td = await post(b, { url: `${o3.url}/d.bin` })
    const st = async () => (await (await request(`${b}/api/v1/tasks/${td.taskId}`)).body.json())
    await until(async () => (await st()).piecesDone > 0, 'the first piece', 60_000)
    const lat = []
    let ahead = 0
    while ((await st()).state !== 'succeeded') {
      const off = Math.floor(Math.random() * (dsize - 4096))
      if (off > o3.sent['d.bin']) ahead++
      const r = await timed(`${b}/api/v1/tasks/${td.taskId}/content`, { headers: { range: `bytes=${off}-${off + 4095}`, 'x-guoce-access': td.access } }, dfile.subarray(off, off + 4096))
      lat.push(r.all)
    }
    const pieceMs = pieceLayout(dsize).pieceLength / (Number(values['during-rate-mib']) * MiB) * 1000
    out.during_download = {
      rate_bytes_per_s: Number(values['during-rate-mib']) * MiB, reads: lat.length, ahead_of_fill: ahead,
      median_ms: +median(lat).toFixed(2), p99_ms: +p99(lat).toFixed(2), piece_ms: +pieceMs.toFixed(2),
      p99_over_piece: +(p99(lat) / pieceMs).toFixed(3),
      origin_bytes_over_file: +(o3.totalSent() / dsize).toFixed(4)
    }
    await o3.close()
    out.random_4k = {
      concurrency: conc,
      pread_per_s: pread.per_s, reader_per_s: viaReader.per_s, local_api_per_s: viaApi.per_s,
      pread_p99_ms: pread.p99_ms, reader_p99_ms: viaReader.p99_ms, local_api_p99_ms: viaApi.p99_ms,
      reader_over_pread: +(viaReader.per_s / pread.per_s).toFixed(3),
      local_api_over_pread: +(viaApi.per_s / pread.per_s).toFixed(3)
    }
  } finally {
    await cluster.close()
  }
} finally {
  cleanup()
  await stopAll()
  await rm(tmp, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(out) + '\n')
