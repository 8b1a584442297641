// bench/read: the reader against what it replaces, in one process tree.
//  A. Time to first byte of a 1 MiB range at a random offset of a 1 GiB task: cold (only the origin has
//     it: a fresh ranged task on daemon A) and warm (daemon B reads the range A just read: from the
//     swarm), against a direct HTTP Range request to the origin. Every path goes through the same origin,
//     whose shared upload is limited to --rate-mib (1 Gbit/s by default): loopback with the origin's
//     token bucket standing in for the shaped link.
//  B. Random 4 KiB reads per second from a complete local task: through the reader (in process, the
//     contract every consumer calls) and through the local API (HTTP Range, what another process gets),
//     against pread of the same file from Node, same offsets and concurrency.
//  C. 4 KiB reads at random offsets during a full download of the task (--during-rate-mib): p99 latency
//     against the time one piece takes on the link.
// usage: npm run bench -- read [--samples 8] [--rate-mib 119] [--seconds 3] [--concurrency 16] [--during-rate-mib 12]
import { parseArgs } from 'node:util'
import { randomBytes, createHash } from 'node:crypto'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request, Pool } from 'undici'
import { startOrigin, startCluster, stopAll, until } from '@guoce/testkit'
import { openStore } from '@guoce/store'
import { pieceLayout, sha256, taskIdFrom } from '@guoce/content'
import { taskReader, storedSource } from '@guoce/peer'

const { values } = parseArgs({ options: { samples: { type: 'string', default: '8' }, 'rate-mib': { type: 'string', default: '119' }, seconds: { type: 'string', default: '3' }, concurrency: { type: 'string', default: '16' }, 'during-rate-mib': { type: 'string', default: '12' } } })
const MiB = 1024 * 1024
const GiB = 1024 * MiB
const samples = Number(values.samples)
const rate = Number(values['rate-mib']) * MiB
const seconds = Number(values.seconds)
const conc = Number(values.concurrency)
const log = (m) => process.stderr.write(`[read] ${m}\n`)
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
const p99 = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] }

/** a random 1 MiB block repeated, each 4 KiB stamped with its offset */
function stamped (size) {
  const block = randomBytes(MiB)
  const b = Buffer.allocUnsafe(size)
  for (let off = 0; off < size; off += MiB) block.copy(b, off, 0, Math.min(MiB, size - off))
  for (let off = 0; off + 8 <= size; off += 4096) b.writeDoubleLE(off, off)
  return b
}

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

async function post (api, body) {
  const res = await request(`${api}/api/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
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

const out = { benchmark: 'read', rate_bytes_per_s: rate, samples }
const tmp = await mkdtemp(join(tmpdir(), 'guoce-bench-read-'))
try {
  // A: time to first byte
  log('making a 1 GiB origin file')
  const file = stamped(GiB)
  const origin = await startOrigin({ files: { 'big.bin': file }, validators: 'etag', rate })
  const cluster = await startCluster({ daemons: 2 })
  try {
    const [a, b] = cluster.daemons.map(d => d.api)
    const url = `${origin.url}/big.bin`
    const direct = []; const cold = []; const warm = []
    let p2pOrigin = 0
    for (let i = 0; i < samples; i++) {
      const off = Math.floor(Math.random() * (GiB - MiB))
      const want = file.subarray(off, off + MiB)
      const range = `bytes=${off}-${off + MiB - 1}`
      direct.push(await timed(url, { headers: { range } }, want))
      const before = origin.totalSent()
      // cold: a task no host has (its own tag), from the request on
      let t0 = performance.now()
      const ta = await post(a, { url, tag: `sample-${i}`, ranged: true })
      const c = await timed(`${a}/api/v1/tasks/${ta.taskId}/content`, { headers: { range, 'x-guoce-access': ta.access } }, want)
      cold.push({ first: c.first + (performance.now() - t0 - c.all), all: performance.now() - t0 })
      // warm: another host, the same range: from the swarm
      t0 = performance.now()
      const tb = await post(b, { url, tag: `sample-${i}`, ranged: true })
      const w = await timed(`${b}/api/v1/tasks/${tb.taskId}/content`, { headers: { range, 'x-guoce-access': tb.access } }, want)
      warm.push({ first: w.first + (performance.now() - t0 - w.all), all: performance.now() - t0 })
      p2pOrigin += origin.totalSent() - before
      log(`sample ${i}: first byte direct ${direct[i].first.toFixed(1)} ms, cold ${cold[i].first.toFixed(1)} ms, warm ${warm[i].first.toFixed(1)} ms`)
    }
    const m = (a, k) => +median(a.map(x => x[k])).toFixed(2)
    out.ttfb_1mib = {
      direct_ms: m(direct, 'first'), cold_ms: m(cold, 'first'), warm_ms: m(warm, 'first'),
      direct_all_ms: m(direct, 'all'), cold_all_ms: m(cold, 'all'), warm_all_ms: m(warm, 'all'),
      cold_over_direct: +(m(cold, 'first') / m(direct, 'first')).toFixed(3),
      warm_over_direct: +(m(warm, 'first') / m(direct, 'first')).toFixed(3),
      // what the cold and warm reads together cost the origin, per byte read by the cold one (a 1 MiB
      // range at a random offset spans two 1 MiB pieces: 2.0 is the piece granularity, not waste)
      p2p_origin_bytes_per_cold_read_byte: +(p2pOrigin / (samples * MiB)).toFixed(4)
    }

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
    const td = await post(a, { url: `${o3.url}/d.bin` })
    const st = async () => (await (await request(`${a}/api/v1/tasks/${td.taskId}`)).body.json())
    await until(async () => (await st()).piecesDone > 0, 'the first piece', 60_000)
    const lat = []
    let ahead = 0
    while ((await st()).state !== 'succeeded') {
      const off = Math.floor(Math.random() * (dsize - 4096))
      if (off > o3.sent['d.bin']) ahead++
      const r = await timed(`${a}/api/v1/tasks/${td.taskId}/content`, { headers: { range: `bytes=${off}-${off + 4095}`, 'x-guoce-access': td.access } }, dfile.subarray(off, off + 4096))
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
    await origin.close()
  }
} finally {
  await stopAll()
  await rm(tmp, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(out) + '\n')
