// Lazy mount read path: sequential read throughput through `guoce image mount` (EROFS mode, 1 MiB chunks,
// local blob source) against the same file on the local disk, and the serving process's peak RSS while
// 8 readers stream the file at once. Prints one JSON object. Needs root and FUSE.
//   node bench/lazy-read/run.js [SIZE_MiB=1024]
import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, mkdir, rm, writeFile, readFile, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const run = promisify(execFile)
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CLI = join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js')
const { convertImage } = await import(join(ROOT, 'packages', 'image', 'dist', 'src', 'index.js'))
const MiB = 1024 * 1024
const size = Number(process.argv[2] ?? 1024) * MiB
const log = (m) => process.stderr.write(m + '\n')
const sha = (b) => createHash('sha256').update(b).digest('hex')

const work = await mkdtemp(join(tmpdir(), 'guoce-bench-lazy-read-'))
const children = new Set()
/** wall ms of `dd if=FILE of=/dev/null bs=1M [iflag=direct]` in a child */
async function dd (file, direct = false) {
  const t0 = process.hrtime.bigint()
  await run('timeout', ['-s', 'KILL', '600', 'dd', `if=${file}`, 'of=/dev/null', 'bs=1M', ...(direct ? ['iflag=direct'] : [])])
  return Number(process.hrtime.bigint() - t0) / 1e6
}
async function mount (ref, name) {
  const mnt = join(work, `mnt-${name}`)
  await mkdir(mnt)
  const p = spawn(process.execPath, [CLI, 'image', 'mount', ref, mnt, '--state', join(work, `state-${name}`), '--chunks', join(work, `chunks-${name}`), '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(p)
  let err = ''
  p.stderr.on('data', d => { err += d })
  const exited = new Promise(resolve => p.once('exit', resolve))
  await new Promise((resolve, reject) => { p.stdout.once('data', resolve); p.once('exit', () => reject(new Error(`mount failed: ${err}`))) })
  return {
    mnt,
    hwmKiB: async () => Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${p.pid}/status`, 'utf8'))[1]),
    stop: async () => { p.kill('SIGTERM'); await exited; children.delete(p); return JSON.parse(err.split('\n').find(l => l.includes('"unmounted"'))) }
  }
}
try {
  // an OCI layout by hand: one uncompressed tar layer holding one file of random bytes
  const rootfs = join(work, 'rootfs')
  await mkdir(rootfs)
  const file = join(rootfs, 'big')
  await run('sh', ['-c', `head -c ${size} /dev/urandom > ${file}`])
  const src = join(work, 'src')
  await mkdir(join(src, 'blobs', 'sha256'), { recursive: true })
  const tar = join(work, 'layer.tar')
  await run('tar', ['--numeric-owner', '-C', rootfs, '-cf', tar, '.'])
  const { stdout: tarSum } = await run('sha256sum', [tar])
  const layerDigest = tarSum.split(' ')[0]
  await run('mv', [tar, join(src, 'blobs', 'sha256', layerDigest)])
  const put = async (obj) => { const b = Buffer.from(JSON.stringify(obj)); const h = sha(b); await writeFile(join(src, 'blobs', 'sha256', h), b); return { digest: `sha256:${h}`, size: b.length } }
  const config = await put({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${layerDigest}`] } })
  const manifest = await put({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${layerDigest}`, size: (await stat(join(src, 'blobs', 'sha256', layerDigest))).size }] })
  await writeFile(join(src, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  await writeFile(join(src, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }))
  const ref = `oci:${join(work, 'lazy')}:v1`
  await convertImage(`oci:${src}:v1`, ref, { chunkSize: MiB })
  log('image ready')

  // baseline, same run: the file on the local disk, cold (O_DIRECT) and warm (page cache)
  const localColdMs = await dd(file, true)
  await dd(file)
  const localWarmMs = await dd(file)

  // one reader: cold (fresh chunk store, fresh mount), then warm (page cache of the FUSE blob file)
  const a = await mount(ref, 'a')
  const lazyColdMs = await dd(join(a.mnt, 'big'))
  const lazyWarmMs = await dd(join(a.mnt, 'big'))
  const sa = await a.stop()

  // 8 readers at once on a fresh mount and store: the serving process's peak RSS
  const b = await mount(ref, 'b')
  const t0 = process.hrtime.bigint()
  await Promise.all(Array.from({ length: 8 }, async () => await dd(join(b.mnt, 'big'))))
  const eightMs = Number(process.hrtime.bigint() - t0) / 1e6
  const hwm = await b.hwmKiB()
  const sb = await b.stop()

  const mbps = (ms) => +(size / MiB / (ms / 1000)).toFixed(1)
  process.stdout.write(JSON.stringify({
    bench: 'lazy-read', sizeBytes: size, chunkSize: MiB,
    localColdMBps: mbps(localColdMs), localWarmMBps: mbps(localWarmMs),
    lazyColdMBps: mbps(lazyColdMs), lazyWarmMBps: mbps(lazyWarmMs),
    coldRatio: +(localColdMs / lazyColdMs).toFixed(3), warmRatio: +(localWarmMs / lazyWarmMs).toFixed(3),
    coldFetchedBytes: sa.store.fetchedBytes, coldFuseReads: sa.server.reads,
    eightReaders: { seconds: +(eightMs / 1000).toFixed(2), aggregateMBps: mbps(eightMs / 8), servingPeakRssMiB: +(hwm / 1024).toFixed(1), fetchedBytes: sb.store.fetchedBytes, fuseReadBytes: sb.server.bytesRead }
  }) + '\n')
} finally {
  for (const p of children) p.kill('SIGKILL')
  const { stdout } = await run('sh', ['-c', `grep -F ' ${work}/' /proc/self/mountinfo | cut -d' ' -f5 | sort -r`]).catch(() => ({ stdout: '' }))
  for (const m of stdout.split('\n').filter(Boolean)) await run('umount', ['-l', m]).catch(() => {})
  await rm(work, { recursive: true, force: true })
}
