#!/usr/bin/env node
/**
 * bench/convert: image conversion as a user runs it, converted image size, the chunk compression choice, and
 * chunk dedup, printed as JSON.
 *
 *   node bench/convert/run.mjs [--a DIR] [--b DIR] [--runs N] [--out DIR] [--sections choice,cli,throughput,dedup]
 *                              [--levels 1,3,6,9,19] [--cli-levels 3] [--chunk-sizes 65536,262144,1048576,4194304]
 *
 * A and B are two versions of a rootfs (default: debootstrap minbase, and minbase with a few more packages,
 * under /var/tmp/guoce-bench; see README.md to make them). Needs `npm run build` first.
 *
 * 1. choice: every distinct chunk of A (1 MiB chunks) compressed alone with zstd at several levels (and lz4 when
 *    the lz4-napi package is installed: `npm i --no-save lz4-napi`), stored only when it saves >= 1/8: stored
 *    bytes against single-thread compression and decompression speed.
 * 2. cli: `guoce image convert --source oci:A --target oci:OUT` (a child process: start-up, whole image, outputs
 *    fsynced) against `gzip -dc LAYER | sha256sum` on the same layer, alternating, median of --runs;
 *    ratio = baseline seconds / CLI seconds (>= 1 means the CLI is faster). Also the converted image's bytes (all
 *    blobs + metadata layers) / the OCI gzip image's bytes (its layers).
 * 3. throughput: convertLayer(A.tar.gz) in this process against the same baseline (as before, compression on).
 * 4. dedup: bytes that image B adds when image A is already present, for OCI layers (whole-layer digests) and for
 *    our chunks at several chunk sizes (B converted with A's chunks as dictionary; added = B's new blob, stored
 *    compressed, + B's metadata image).
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync, zstdCompress, zstdCompressSync, zstdDecompressSync, constants as zc } from 'node:zlib'
import { promisify } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '../..')
const img = await import(join(root, 'packages/image/dist/src/index.js'))
const { convertLayer, createChunkDict, readChunkTable, MIN_COMPRESSION_SAVING } = img

const args = process.argv.slice(2)
const opt = (name, def) => { const i = args.indexOf(`--${name}`); return i === -1 ? def : args[i + 1] }
const A = opt('a', '/var/tmp/guoce-bench/minbase')
const B = opt('b', '/var/tmp/guoce-bench/minbase-plus')
const RUNS = Number(opt('runs', '5'))
const OUT = opt('out', join(root, 'bench/out/convert'))
const SECTIONS = new Set(opt('sections', 'choice,cli,throughput,dedup').split(','))
const LEVELS = opt('levels', '1,3,6,9,19').split(',').map(Number)
const CLI_LEVELS = opt('cli-levels', '3').split(',').map(Number)
const CHUNK_SIZES = (opt('chunk-sizes', '65536,262144,1048576,4194304')).split(',').map(Number)
const CLI = join(root, 'packages/cli/dist/src/bin.js')

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
const sha256File = async p => createHash('sha256').update(await readFile(p)).digest('hex')

async function layerOf (dir, name) {
  const tar = join(OUT, `${name}.tar`)
  if (!existsSync(`${tar}.gz`)) {
    await sh(`tar --format=pax --numeric-owner --sort=name --xattrs --xattrs-include='*' -C '${dir}' -cf '${tar}' . && gzip -6 -k -f '${tar}'`)
  }
  return tar
}

/** A one-layer OCI image layout of a gzip layer, written by hand (what umoci or skopeo would write). */
async function ociLayoutOf (tar, dir) {
  await rm(dir, { recursive: true, force: true })
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true })
  const put = async (data) => { const d = createHash('sha256').update(data).digest('hex'); await writeFile(join(dir, 'blobs/sha256', d), data); return d }
  const layer = await sha256File(`${tar}.gz`)
  await copyFile(`${tar}.gz`, join(dir, 'blobs/sha256', layer))
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${await sha256File(tar)}`] } }))
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${await put(config)}`, size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${layer}`, size: (await stat(`${tar}.gz`)).size }]
  }))
  const md = await put(manifest)
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${md}`, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }))
  return (await stat(`${tar}.gz`)).size
}

async function convert (src, prefix, chunkSize, chunkDict, extra = {}) {
  const metaPath = `${prefix}.erofs`
  const blobPath = `${prefix}.blob`
  await rm(metaPath, { force: true })
  await rm(blobPath, { force: true })
  const t = performance.now()
  const cpu = process.cpuUsage()
  const r = await convertLayer(createReadStream(src, { highWaterMark: 1 << 20 }), { metaPath, blobPath, chunkSize, chunkDict, ...extra })
  const used = process.cpuUsage(cpu)
  return { seconds: (performance.now() - t) / 1000, cpuSeconds: (used.user + used.system) / 1e6, r, metaPath, blobPath }
}

/** Wall and CPU seconds (user + sys of the command and its children, from GNU time) of a shell command. */
async function timed (cmd) {
  const t = performance.now()
  const out = await sh(`/usr/bin/time -f '%U %S' sh -c "${cmd}" 2>&1 >/dev/null | tail -1`)
  const [u, s] = out.trim().split(' ').map(Number)
  return { seconds: (performance.now() - t) / 1000, cpuSeconds: u + s }
}

const loadAverage = async () => (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number)

await mkdir(OUT, { recursive: true })
for (const d of [A, B]) if (!existsSync(d)) { console.error(`missing rootfs ${d}; see bench/convert/README.md`); process.exit(2) }
const aTar = await layerOf(A, 'a')
const bTar = await layerOf(B, 'b')
const result = { bench: 'convert', date: new Date().toISOString(), node: process.version, cpus: cpus().length }
result.inputs = { a: A, b: B, aTarBytes: (await stat(aTar)).size, aGzipBytes: (await stat(`${aTar}.gz`)).size, bTarBytes: (await stat(bTar)).size, bGzipBytes: (await stat(`${bTar}.gz`)).size }

// 1. compression choice, on A's distinct chunks
if (SECTIONS.has('choice')) {
  const raw = await convert(`${aTar}.gz`, join(OUT, 'choice'), 1 << 20, undefined, { compression: 'none' })
  const table = await readChunkTable(raw.metaPath)
  const blob = await readFile(raw.blobPath)
  const chunks = table.entries.map(e => blob.subarray(e.storedOffset, e.storedOffset + e.storedLength))
  const rawBytes = chunks.reduce((s, c) => s + c.length, 0)
  const keep = (c, n) => c.length <= n * (1 - MIN_COMPRESSION_SAVING)
  const rows = []
  const measure = (name, comp, decomp) => {
    let t = process.cpuUsage()
    const out = chunks.map(c => comp(c))
    const cu = process.cpuUsage(t)
    let stored = 0
    let compressed = 0
    out.forEach((c, i) => { if (keep(c, chunks[i].length)) { stored += c.length; compressed++ } else stored += chunks[i].length })
    t = process.cpuUsage()
    out.forEach((c, i) => { if (keep(c, chunks[i].length)) decomp(c, chunks[i].length) })
    const du = process.cpuUsage(t)
    const decodedBytes = out.reduce((s, c, i) => s + (keep(c, chunks[i].length) ? chunks[i].length : 0), 0)
    rows.push({
      method: name,
      storedBytes: stored,
      storedOverRaw: +(stored / rawBytes).toFixed(4),
      imageOverOciGzip: +((stored + raw.r.metaSize) / result.inputs.aGzipBytes).toFixed(4),
      compressedChunks: compressed,
      compressMBpsPerCpu: +(rawBytes / (cu.user + cu.system)).toFixed(1),
      decompressMBpsPerCpu: decodedBytes === 0 ? null : +(decodedBytes / (du.user + du.system)).toFixed(1)
    })
  }
  rows.push({ method: 'none', storedBytes: rawBytes, storedOverRaw: 1, imageOverOciGzip: +((rawBytes + raw.r.metaSize) / result.inputs.aGzipBytes).toFixed(4), compressedChunks: 0 })
  for (const level of LEVELS) {
    measure(`zstd ${level}`, c => zstdCompressSync(c, { params: { [zc.ZSTD_c_compressionLevel]: level, [zc.ZSTD_c_checksumFlag]: 0 } }), (c, n) => zstdDecompressSync(c, { maxOutputLength: n }))
  }
  // zstd 3 as the converter's workers call it: the chunk's size pledged, a window just as large as the chunk
  measure('zstd 3, pledged size + fitted window (as converted)', c => zstdCompressSync(c, { pledgedSrcSize: c.length, params: { [zc.ZSTD_c_compressionLevel]: 3, [zc.ZSTD_c_checksumFlag]: 0, [zc.ZSTD_c_windowLog]: img.zstdWindowLog(c.length) } }), (c, n) => zstdDecompressSync(c, { maxOutputLength: n }))
  // node:zlib's async API (libuv pool, 16 chunks in flight): CPU per byte, all threads of this process
  {
    const za = promisify(zstdCompress)
    const t = process.cpuUsage()
    const q = []
    let stored = 0
    for (const c of chunks) {
      q.push(za(c, { pledgedSrcSize: c.length, params: { [zc.ZSTD_c_compressionLevel]: 3, [zc.ZSTD_c_checksumFlag]: 0, [zc.ZSTD_c_windowLog]: img.zstdWindowLog(c.length) } }).then(z => { stored += keep(z, c.length) ? z.length : c.length }))
      if (q.length >= 16) await q.shift()
    }
    await Promise.all(q)
    const u = process.cpuUsage(t)
    rows.push({ method: 'zstd 3, async node:zlib API (16 in flight)', storedBytes: stored, compressMBpsPerCpu: +(rawBytes / (u.user + u.system)).toFixed(1) })
  }
  let lz4
  try { lz4 = createRequire(join(root, 'package.json'))('lz4-napi') } catch { lz4 = undefined }
  if (lz4 !== undefined) measure('lz4 (lz4-napi, block)', c => lz4.compressSync(c), c => lz4.uncompressSync(c))
  else rows.push({ method: 'lz4', note: 'lz4-napi not installed (npm i --no-save lz4-napi to measure it)' })
  measure('gzip 6 per chunk (reference)', c => gzipSync(c, { level: 6 }), () => {})
  result.choice = { layer: 'a', chunkSize: 1 << 20, chunks: chunks.length, rawBytes, metaBytes: raw.r.metaSize, ociGzipBytes: result.inputs.aGzipBytes, minSaving: MIN_COMPRESSION_SAVING, rows, loadAverage: await loadAverage() }
  await rm(raw.metaPath, { force: true })
  await rm(raw.blobPath, { force: true })
}

// 2. the CLI, whole image, against gzip -dc | sha256sum on the same layer
if (SECTIONS.has('cli')) {
  result.cli = []
  for (const [name, tar] of [['a', aTar], ['b', bTar]]) {
    const src = join(OUT, `oci-${name}`)
    const ociBytes = await ociLayoutOf(tar, src)
    for (const level of CLI_LEVELS) {
      const dst = join(OUT, `oci-${name}-lazy`)
      const base = []; const ours = []; const baseCpu = []; const oursCpu = []
      let size
      await sh(`cat '${tar}.gz' > /dev/null`) // page cache warm
      for (let i = 0; i < RUNS + 1; i++) {
        await rm(dst, { recursive: true, force: true })
        const b = await timed(`gzip -dc '${tar}.gz' | sha256sum`)
        const c = await timed(`'${process.execPath}' '${CLI}' image convert --source 'oci:${src}:v1' --target 'oci:${dst}:v1' --compression-level ${level}`)
        if (i > 0) { base.push(b.seconds); ours.push(c.seconds); baseCpu.push(b.cpuSeconds); oursCpu.push(c.cpuSeconds) } // first round warms up
        const index = JSON.parse(await readFile(join(dst, 'index.json'), 'utf8'))
        const manifest = JSON.parse(await readFile(join(dst, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'))
        size = {
          convertedBytes: manifest.layers.reduce((s, l) => s + l.size, 0),
          blobBytes: manifest.layers.filter(l => l.mediaType === img.MEDIA_TYPE_CHUNK_BLOB).reduce((s, l) => s + l.size, 0),
          metadataBytes: manifest.layers.filter(l => l.mediaType === img.MEDIA_TYPE_EROFS_META).reduce((s, l) => s + l.size, 0)
        }
      }
      result.cli.push({
        layer: name,
        gzipBytes: ociBytes,
        compressionLevel: level,
        baseline: { command: 'gzip -dc LAYER | sha256sum', seconds: base, medianSeconds: median(base), cpuSeconds: baseCpu },
        convert: { command: 'guoce image convert --source oci:SRC:v1 --target oci:DST:v1', seconds: ours, medianSeconds: median(ours), cpuSeconds: oursCpu },
        ratio: +(median(base) / median(ours)).toFixed(3),
        size: { ...size, ociGzipBytes: ociBytes, ratio: +(size.convertedBytes / ociBytes).toFixed(4) },
        loadAverage: await loadAverage()
      })
      await rm(dst, { recursive: true, force: true })
    }
    await rm(src, { recursive: true, force: true })
  }
}

// 3. in-process throughput
if (SECTIONS.has('throughput')) {
  await sh(`cat '${aTar}.gz' > /dev/null`)
  const base = []; const ours = []; const baseCpu = []; const oursCpu = []
  let last
  for (let i = 0; i < RUNS + 1; i++) {
    const b = await timed(`gzip -dc '${aTar}.gz' | sha256sum`)
    const c = await convert(`${aTar}.gz`, join(OUT, 'tp'), 1 << 20)
    if (i > 0) { base.push(b.seconds); ours.push(c.seconds); baseCpu.push(b.cpuSeconds); oursCpu.push(c.cpuSeconds) }
    last = c.r
  }
  const tarBytes = result.inputs.aTarBytes
  result.throughput = {
    layer: { tarBytes, gzipBytes: result.inputs.aGzipBytes, files: last.files, entries: last.entries, blobBytes: last.blobSize, blobViewBytes: last.blobViewSize, metaBytes: last.metaSize },
    baseline: { command: 'gzip -dc LAYER | sha256sum', seconds: base, medianSeconds: median(base), MBps: tarBytes / 1e6 / median(base), cpuSeconds: baseCpu },
    convert: { chunkSize: 1 << 20, seconds: ours, medianSeconds: median(ours), MBps: tarBytes / 1e6 / median(ours), cpuSeconds: oursCpu, note: 'cpuSeconds include the compression workers' },
    ratio: median(base) / median(ours),
    cpuRatio: median(baseCpu) / median(oursCpu),
    loadAverage: await loadAverage()
  }
  await rm(join(OUT, 'tp.erofs'), { force: true })
  await rm(join(OUT, 'tp.blob'), { force: true })
}

// 4. dedup
if (SECTIONS.has('dedup')) {
  const dedup = []
  const bGz = result.inputs.bGzipBytes
  dedup.push({ method: 'OCI layers (gzip)', addedBytes: bGz, note: 'no layer digest in common: the whole layer B is new' })
  for (const cs of CHUNK_SIZES) {
    const dict = createChunkDict()
    const a = await convert(`${aTar}.gz`, join(OUT, `a-${cs}`), cs, dict)
    const b = await convert(`${bTar}.gz`, join(OUT, `b-${cs}`), cs, dict)
    const alone = await convert(`${bTar}.gz`, join(OUT, `b-alone-${cs}`), cs, undefined)
    dedup.push({
      method: `chunks ${cs / 1024} KiB, zstd`,
      chunkSize: cs,
      addedBytes: b.r.blobSize + b.r.metaSize,
      addedBlobBytes: b.r.blobSize,
      addedBlobViewBytes: b.r.blobViewSize,
      addedMetaBytes: b.r.metaSize,
      bAloneBytes: alone.r.blobSize + alone.r.metaSize,
      bAloneOverOciGzip: +((alone.r.blobSize + alone.r.metaSize) / bGz).toFixed(4),
      aBytes: a.r.blobSize + a.r.metaSize,
      chunksB: b.r.stats.chunks,
      dedupFromA: b.r.stats.dedupFromDict,
      dedupWithinB: b.r.stats.dedupInLayer
    })
    for (const x of [a, b, alone]) { await rm(x.metaPath, { force: true }); await rm(x.blobPath, { force: true }) }
  }
  result.dedup = dedup
}

console.log(JSON.stringify(result, null, 2))
