// bench/delta: delta updates of a real OS image. Two versions of a Debian root (debootstrap minbase bookworm, and
// the same plus a few packages), each made into an EROFS image (mkfs.erofs) and an ext4 image (mkfs.ext4 -d).
// For each pair, in one run: the bytes of the new image that a delta update must fetch with content-defined
// chunks (FastCDC, @guoce/delta) and with fixed-size chunks of the same (average) size, against the bytes
// that differ between the two trees (regular files of v2 whose content v1 lacks); the same rounded up to the
// swarm's pieces (what a ranged task through the daemon fetches); one real `guoce get --seed-from` through a
// scheduler, seed and daemon with the origin's bytes counted; and the chunker's speed against sha256 of the
// same image.
// usage: node bench/delta/run.js [--cache /var/tmp/guoce-bench/delta] [--avgs 16,32,64,128] [--fs erofs,ext4] [--e2e erofs|none]
// needs `npm run build`, root, debootstrap (trees are made once into --cache and reused), erofs-utils, e2fsprogs.
import { parseArgs } from 'node:util'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, readdirSync, lstatSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chunkFile, cutBuffer, nativeCutter, indexOf, encodeIndex, DEFAULT_PARAMS, INDEX_HEADER_BYTES, INDEX_ENTRY_BYTES } from '@guoce/delta'
import { pieceLayout } from '@guoce/content'
import { startOrigin, startCluster, runGuoce, stopAll } from '@guoce/testkit'

const { values } = parseArgs({ options: { cache: { type: 'string', default: '/var/tmp/guoce-bench/delta' }, avgs: { type: 'string', default: '8,16,32,64,128' }, fs: { type: 'string', default: 'erofs,ext4' }, e2e: { type: 'string', default: 'erofs' }, include: { type: 'string', default: 'less,procps,iproute2,ca-certificates' } } })
const KiB = 1024; const MiB = 1024 * KiB
const log = (m) => process.stderr.write(`[delta] ${m}\n`)
const cache = values.cache
mkdirSync(cache, { recursive: true })
const sh = (cmd, args) => {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`)
}

// 1. two trees, made once
const trees = { v1: join(cache, 'v1'), v2: join(cache, 'v2') }
for (const [name, dir] of Object.entries(trees)) {
  if (existsSync(dir)) continue
  log(`debootstrap ${name} into ${dir} (about a minute)`)
  rmSync(`${dir}.tmp`, { recursive: true, force: true })
  sh('debootstrap', ['--variant=minbase', ...(name === 'v2' ? [`--include=${values.include}`] : []), 'bookworm', `${dir}.tmp`, 'http://deb.debian.org/debian'])
  renameSync(`${dir}.tmp`, dir)
}

// 2. bytes that differ: regular files of v2 whose content v1 has nowhere
function files (root) {
  const out = []
  const walk = (d) => {
    for (const n of readdirSync(d)) {
      const p = join(d, n)
      const st = lstatSync(p)
      if (st.isDirectory()) walk(p)
      else if (st.isFile()) out.push({ p, size: st.size })
    }
  }
  walk(root)
  return out
}
const hashOf = (p) => createHash('sha256').update(readFileSync(p)).digest('hex')
const v1hashes = new Set(files(trees.v1).map(f => hashOf(f.p)))
const v2files = files(trees.v2)
const differ = v2files.filter(f => !v1hashes.has(hashOf(f.p))).reduce((a, f) => a + f.size, 0)
const v2bytes = v2files.reduce((a, f) => a + f.size, 0)
log(`trees: v2 has ${v2files.length} files, ${(v2bytes / MiB).toFixed(1)} MiB; ${(differ / MiB).toFixed(2)} MiB of it v1 lacks`)

// 3. images (rebuilt when missing: mkfs of each tree, as a distribution's image build would)
const images = {}
for (const fs of values.fs.split(',')) {
  for (const v of ['v1', 'v2']) {
    const img = join(cache, `${v}.${fs}`)
    if (!existsSync(img)) {
      log(`mkfs ${fs} of ${v}`)
      if (fs === 'erofs') sh('mkfs.erofs', ['--quiet', `${img}.tmp`, trees[v]])
      else if (fs === 'ext4') sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', trees[v], `${img}.tmp`, `${Math.ceil(v2bytes * 1.6 / MiB)}M`])
      else throw new Error(`--fs ${fs}: erofs or ext4`)
      renameSync(`${img}.tmp`, img)
    }
    images[`${v}.${fs}`] = img
  }
}

/** Fixed-size chunks of `size`: digests of v1's as a set, v2's chunks with offsets. */
async function fixedChunks (path, size) {
  const buf = await readFile(path)
  const out = []
  for (let off = 0; off < buf.length; off += size) {
    const len = Math.min(size, buf.length - off)
    out.push({ offset: off, length: len, digest: createHash('sha256').update(buf.subarray(off, off + len)).digest() })
  }
  return { size: buf.length, chunks: out }
}

/** Bytes of v2's chunks no v1 chunk has, and those rounded to whole pieces (the swarm's granularity). */
function needed (v1, v2) {
  const have = new Set(v1.chunks.map(c => c.digest.toString('hex')))
  const { pieceLength } = pieceLayout(v2.size)
  const pieces = new Set()
  let bytes = 0; let n = 0
  for (const c of v2.chunks) {
    if (have.has(c.digest.toString('hex'))) continue
    bytes += c.length; n++
    for (let p = Math.floor(c.offset / pieceLength); p <= Math.floor((c.offset + c.length - 1) / pieceLength); p++) pieces.add(p)
  }
  let pieceBytes = 0
  for (const p of pieces) pieceBytes += Math.min(pieceLength, v2.size - p * pieceLength)
  return { chunks: v2.chunks.length, missing: n, bytes, pieceBytes, pieceLength }
}

const result = { tree: { v2Files: v2files.length, v2FileBytes: v2bytes, differBytes: differ, include: values.include }, images: {} }
for (const fs of values.fs.split(',')) {
  const [a, b] = [images[`v1.${fs}`], images[`v2.${fs}`]]
  const size = statSync(b).size
  const r = { v1Bytes: statSync(a).size, v2Bytes: size, byAvg: {} }
  for (const avgK of values.avgs.split(',').map(Number)) {
    const avg = avgK * KiB
    const params = { min: avg / 4, avg, max: avg * 4 }
    const [c1, c2] = [await chunkFile(a, params), await chunkFile(b, params)]
    const cdc = needed(c1, c2)
    const fixed = needed(await fixedChunks(a, avg), await fixedChunks(b, avg))
    r.byAvg[`${avgK}KiB`] = {
      cdc: { ...cdc, over_differ: +(cdc.bytes / differ).toFixed(3), pieces_over_differ: +(cdc.pieceBytes / differ).toFixed(3), indexBytes: INDEX_HEADER_BYTES + c2.chunks.length * INDEX_ENTRY_BYTES },
      fixed: { ...fixed, over_differ: +(fixed.bytes / differ).toFixed(3), pieces_over_differ: +(fixed.pieceBytes / differ).toFixed(3) },
      fixed_over_cdc: +(fixed.bytes / cdc.bytes).toFixed(2)
    }
    log(`${fs} avg ${avgK} KiB: cdc ${(cdc.bytes / MiB).toFixed(1)} MiB (${(cdc.pieceBytes / MiB).toFixed(1)} in pieces), fixed ${(fixed.bytes / MiB).toFixed(1)} MiB (${(fixed.pieceBytes / MiB).toFixed(1)}), differ ${(differ / MiB).toFixed(1)} MiB, image ${(size / MiB).toFixed(0)} MiB`)
  }
  result.images[fs] = r
}

// 4. the chunker against sha256 of the same image (in memory: the cut loop alone, JS and C; from the file: a
// whole index, i.e. cut points + sha256 of each chunk + sha256 of the file); medians of 5, alternating
{
  const img = images[`v2.${values.fs.split(',')[0]}`]
  const buf = await readFile(img)
  const mbps = (ms) => +(buf.length / 1e6 / (ms / 1000)).toFixed(0)
  const time = async (f) => { const t = performance.now(); await f(); return performance.now() - t }
  const med = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  const native = await nativeCutter()
  if (native === undefined) throw new Error('@guoce/native-cdc is not built: npm run build')
  const runs = { sha256: [], cutJs: [], cutC: [], indexJs: [], indexC: [], shaFile: [] }
  const params = DEFAULT_PARAMS
  createHash('sha256').update(buf).digest(); cutBuffer(buf, buf.length, true, params, []); native(buf, buf.length, true, params, []) // warm up
  for (let i = 0; i < 5; i++) {
    runs.sha256.push(await time(() => createHash('sha256').update(buf).digest()))
    runs.cutJs.push(await time(() => cutBuffer(buf, buf.length, true, params, [])))
    runs.cutC.push(await time(() => native(buf, buf.length, true, params, [])))
    runs.indexJs.push(await time(async () => indexOf(await chunkFile(img, params, { cutter: cutBuffer }), params)))
    runs.indexC.push(await time(async () => indexOf(await chunkFile(img, params, { cutter: native }), params)))
    runs.shaFile.push(await time(async () => { const h = createHash('sha256'); h.update(await readFile(img)); h.digest() }))
  }
  result.speed = {
    image: img, bytes: buf.length, avg: params.avg,
    sha256_MBps: mbps(med(runs.sha256)), cut_js_MBps: mbps(med(runs.cutJs)), cut_c_MBps: mbps(med(runs.cutC)),
    index_js_MBps: mbps(med(runs.indexJs)), index_c_MBps: mbps(med(runs.indexC)), sha256_file_MBps: mbps(med(runs.shaFile)),
    cut_js_over_sha256: +(med(runs.sha256) / med(runs.cutJs)).toFixed(2),
    cut_c_over_sha256: +(med(runs.sha256) / med(runs.cutC)).toFixed(2),
    index_js_over_sha256_file: +(med(runs.shaFile) / med(runs.indexJs)).toFixed(2),
    index_c_over_sha256_file: +(med(runs.shaFile) / med(runs.indexC)).toFixed(2)
  }
  log(`speed: ${JSON.stringify(result.speed)}`)
}

// 5. one real delta update through scheduler, seed and daemon: what the origin sent
if (values.e2e !== 'none') {
  const fs = values.e2e
  const [a, b] = [images[`v1.${fs}`], images[`v2.${fs}`]]
  const work = await mkdtemp(join(tmpdir(), 'guoce-bench-delta-'))
  const newBytes = await readFile(b)
  const idx = encodeIndex(indexOf(await chunkFile(b), DEFAULT_PARAMS))
  const origin = await startOrigin({ validators: 'etag', files: { 'os.img': newBytes, 'os.img.gcidx': idx } })
  const cluster = await startCluster({ daemons: 1 })
  try {
    result.e2e = { fs, image: b, seeds: a, avg: DEFAULT_PARAMS.avg, differBytes: differ }
    // the same update twice: ranges through the daemon (whole pieces), then straight from the origin
    for (const source of ['swarm', 'origin']) {
      const before = origin.sent['os.img'] ?? 0
      const beforeIdx = origin.sent['os.img.gcidx'] ?? 0
      const t0 = performance.now()
      const out = join(work, `new-${source}`)
      const r = await runGuoce(['get', `${origin.url}/os.img`, '-O', out, '--seed-from', a, '--delta-source', source, '--daemon', cluster.daemons[0].api, '--json'], { timeoutMs: 600_000 })
      const secs = (performance.now() - t0) / 1000
      if (r.code !== 0) throw new Error(`guoce get: ${r.stderr}`)
      const j = JSON.parse(r.stdout.trim().split('\n').pop())
      const same = createHash('sha256').update(await readFile(out)).digest('hex') === createHash('sha256').update(newBytes).digest('hex')
      if (!same || j.via !== 'delta') throw new Error(`delta get went wrong: via ${j.via}, identical ${same}; ${r.stderr}`)
      const sent = (origin.sent['os.img'] ?? 0) - before
      result.e2e[source] = { seconds: +secs.toFixed(2), identical: same, originBytes: sent, indexBytes: (origin.sent['os.img.gcidx'] ?? 0) - beforeIdx, chunkBytes: j.delta.fetchBytes, reportedBytes: j.delta.pieceBytes, origin_over_differ: +(sent / differ).toFixed(3), origin_over_image: +(sent / newBytes.length).toFixed(4) }
      log(`e2e ${source}: ${JSON.stringify(result.e2e[source])}`)
    }
  } finally {
    await cluster.close(); await origin.close(); await stopAll()
    await rm(work, { recursive: true, force: true })
  }
}

process.stdout.write(JSON.stringify(result) + '\n')
