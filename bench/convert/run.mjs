#!/usr/bin/env node
/**
 * bench/convert: layer conversion throughput and chunk dedup, printed as JSON.
 *
 *   node bench/convert/run.mjs [--a DIR] [--b DIR] [--runs N] [--out DIR]
 *
 * A and B are two versions of a rootfs (default: debootstrap minbase, and minbase with a few more packages,
 * under /var/tmp/guoce-bench; see README.md to make them). Needs `npm run build` first (packages/image/dist).
 *
 * 1. Throughput: convertLayer(A.tar.gz) against `gzip -dc A.tar.gz | sha256sum`, both run from this process,
 *    alternating, median of --runs; ratio = baseline seconds / convert seconds (>= 1 means convert is faster).
 * 2. Dedup: bytes that image B adds when image A is already present, for OCI layers (whole-layer digests),
 *    for our chunks at several chunk sizes (B converted with A's chunks as dictionary; added = B's new blob
 *    + B's metadata image), and the same chunks if each were zstd-compressed (Nydus-like storage).
 */
import { spawn } from 'node:child_process'
import { createReadStream, existsSync } from 'node:fs'
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { zstdCompressSync } from 'node:zlib'

const root = join(dirname(fileURLToPath(import.meta.url)), '../..')
const { convertLayer, createChunkDict, ErofsReader } = await import(join(root, 'packages/image/dist/src/index.js'))
const { decodeChunkTable } = await import(join(root, 'packages/image/dist/src/blob.js'))

const args = process.argv.slice(2)
const opt = (name, def) => { const i = args.indexOf(`--${name}`); return i === -1 ? def : args[i + 1] }
const A = opt('a', '/var/tmp/guoce-bench/minbase')
const B = opt('b', '/var/tmp/guoce-bench/minbase-plus')
const RUNS = Number(opt('runs', '5'))
const OUT = opt('out', join(root, 'bench/out/convert'))
const CHUNK_SIZES = (opt('chunk-sizes', '65536,262144,1048576,4194304')).split(',').map(Number)

function sh (cmd) {
  return new Promise((resolve, reject) => {
    const p = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    p.stdout.on('data', d => { out += d })
    p.on('error', reject)
    p.on('close', code => code === 0 ? resolve(out) : reject(new Error(`${cmd}: exit ${code}`)))
  })
}

const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function layerOf (dir, name) {
  const tar = join(OUT, `${name}.tar`)
  if (!existsSync(`${tar}.gz`)) {
    await sh(`tar --format=pax --numeric-owner --sort=name --xattrs --xattrs-include='*' -C '${dir}' -cf '${tar}' . && gzip -6 -k -f '${tar}'`)
  }
  return tar
}

async function convert (src, prefix, chunkSize, chunkDict) {
  const metaPath = `${prefix}.erofs`
  const blobPath = `${prefix}.blob`
  await rm(metaPath, { force: true })
  await rm(blobPath, { force: true })
  const t = performance.now()
  const cpu = process.cpuUsage()
  const r = await convertLayer(createReadStream(src, { highWaterMark: 1 << 20 }), { metaPath, blobPath, chunkSize, chunkDict })
  const used = process.cpuUsage(cpu)
  return { seconds: (performance.now() - t) / 1000, cpuSeconds: (used.user + used.system) / 1e6, r, metaPath, blobPath }
}

/** Wall and CPU seconds (user + sys of the shell and its children, from GNU time) of a shell command. */
async function timed (cmd) {
  const t = performance.now()
  const out = await sh(`/usr/bin/time -f '%U %S' sh -c "${cmd}" 2>&1 >/dev/null | tail -1`)
  const [u, s] = out.trim().split(' ').map(Number)
  return { seconds: (performance.now() - t) / 1000, cpuSeconds: u + s }
}

/** zstd size of the chunks a layer stored in its own blob (each compressed alone, as Nydus stores chunks). */
async function zstdBytesOfOwnChunks (metaPath, blobPath, ownTag) {
  if (!existsSync(blobPath)) return 0
  const img = await readFile(metaPath)
  const reader = new ErofsReader(img)
  const table = decodeChunkTable(img.subarray(reader.sb.blocks * 4096))
  const own = reader.sb.devices.findIndex(d => d.tag === ownTag) + 1
  const fh = await open(blobPath)
  let total = 0
  try {
    for (const e of table.entries) {
      if (e.device !== own) continue
      const buf = Buffer.alloc(e.length)
      await fh.read(buf, 0, e.length, e.blkaddr * 4096)
      total += zstdCompressSync(buf).length
    }
  } finally { await fh.close() }
  return total
}

await mkdir(OUT, { recursive: true })
for (const d of [A, B]) if (!existsSync(d)) { console.error(`missing rootfs ${d}; see bench/convert/README.md`); process.exit(2) }
const aTar = await layerOf(A, 'a')
const bTar = await layerOf(B, 'b')

// 1. throughput
await sh(`cat '${aTar}.gz' > /dev/null`) // page cache warm
const base = []
const ours = []
const baseCpu = []
const oursCpu = []
let last
for (let i = 0; i < RUNS + 1; i++) {
  const b = await timed(`gzip -dc '${aTar}.gz' | sha256sum`)
  const c = await convert(`${aTar}.gz`, join(OUT, 'tp'), 1 << 20)
  if (i > 0) { base.push(b.seconds); ours.push(c.seconds); baseCpu.push(b.cpuSeconds); oursCpu.push(c.cpuSeconds) } // first round warms up
  last = c.r
}
const tarBytes = (await stat(aTar)).size
const throughput = {
  layer: { tarBytes, gzipBytes: (await stat(`${aTar}.gz`)).size, files: last.files, entries: last.entries },
  baseline: { command: 'gzip -dc LAYER | sha256sum', seconds: base, medianSeconds: median(base), MBps: tarBytes / 1e6 / median(base), cpuSeconds: baseCpu },
  convert: { chunkSize: 1 << 20, seconds: ours, medianSeconds: median(ours), MBps: tarBytes / 1e6 / median(ours), cpuSeconds: oursCpu },
  ratio: median(base) / median(ours),
  cpuRatio: median(baseCpu) / median(oursCpu),
  loadAverage: (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number)
}

// 2. dedup
const dedup = []
const bGz = (await stat(`${bTar}.gz`)).size
dedup.push({ method: 'OCI layers (gzip)', addedBytes: bGz, note: 'no layer digest in common: the whole layer B is new' })
for (const cs of CHUNK_SIZES) {
  const dict = createChunkDict()
  const a = await convert(`${aTar}.gz`, join(OUT, `a-${cs}`), cs, dict)
  const b = await convert(`${bTar}.gz`, join(OUT, `b-${cs}`), cs, dict)
  const alone = await convert(`${bTar}.gz`, join(OUT, `b-alone-${cs}`), cs, undefined)
  const zstd = await zstdBytesOfOwnChunks(b.metaPath, b.blobPath, b.r.blobDigest)
  dedup.push({
    method: `chunks ${cs / 1024} KiB`,
    chunkSize: cs,
    addedBytes: b.r.blobSize + b.r.metaSize,
    addedBlobBytes: b.r.blobSize,
    addedMetaBytes: b.r.metaSize,
    addedZstdBytes: zstd + b.r.metaSize,
    bAloneBytes: alone.r.blobSize + alone.r.metaSize,
    aBytes: a.r.blobSize + a.r.metaSize,
    chunksB: b.r.stats.chunks,
    dedupFromA: b.r.stats.dedupFromDict,
    dedupWithinB: b.r.stats.dedupInLayer
  })
  for (const x of [a, b, alone]) { await rm(x.metaPath, { force: true }); await rm(x.blobPath, { force: true }) }
}
await rm(join(OUT, 'tp.erofs'), { force: true })
await rm(join(OUT, 'tp.blob'), { force: true })

console.log(JSON.stringify({
  bench: 'convert',
  date: new Date().toISOString(),
  node: process.version,
  cpus: cpus().length,
  inputs: { a: A, b: B, aTarBytes: tarBytes, bTarBytes: (await stat(bTar)).size, bGzipBytes: bGz },
  throughput,
  dedup
}, null, 2))
