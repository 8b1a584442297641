// Lazy mount: bytes fetched against bytes a start-up-like workload reads, per chunk size.
// A rootfs of Debian's python3.11 (interpreter, its shared libraries, /usr/lib/python3.11) becomes a one-layer
// OCI image (umoci), converted at each chunk size; each is mounted by `guoce image mount` (a child process,
// fresh node chunk store) and `chroot MNT python3 -c 'import json, sqlite3'` runs in another child. The same
// workload on the local rootfs (ext4/tmpfs), traced with strace, gives the files it opens.
// Prints one JSON object. Needs root, FUSE, umoci, strace, python3.11 (Debian).
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, mkdir, rm, stat, copyFile, readdir, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const run = promisify(execFile)
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CLI = join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js')
const { convertImage } = await import(join(ROOT, 'packages', 'image', 'dist', 'src', 'index.js'))
const WORKLOAD = ['/usr/bin/python3.11', '-c', 'import json, sqlite3']
const sizes = (process.argv[2] ?? '65536,262144,1048576').split(',').map(Number)
const log = (m) => process.stderr.write(m + '\n')

const work = await mkdtemp(join(tmpdir(), 'guoce-bench-lazy-'))
const children = new Set()
try {
  // --- the rootfs ---
  const rootfs = join(work, 'bundle', 'rootfs')
  await run('umoci', ['init', '--layout', join(work, 'src')])
  await run('umoci', ['new', '--image', `${join(work, 'src')}:v1`])
  await run('umoci', ['unpack', '--image', `${join(work, 'src')}:v1`, join(work, 'bundle')])
  const libs = new Set(['/lib64/ld-linux-x86-64.so.2'])
  for (const bin of ['/usr/bin/python3.11', ...(await readdir('/usr/lib/python3.11/lib-dynload')).map(f => join('/usr/lib/python3.11/lib-dynload', f))]) {
    const { stdout } = await run('ldd', [bin]).catch(() => ({ stdout: '' }))
    for (const m of stdout.matchAll(/=> (\/\S+)/g)) libs.add(m[1])
  }
  for (const f of ['/usr/bin/python3.11', ...libs]) {
    const to = join(rootfs, f)
    await mkdir(dirname(to), { recursive: true })
    await copyFile(f, to)
  }
  await mkdir(join(rootfs, 'usr/lib'), { recursive: true })
  await run('cp', ['-a', '/usr/lib/python3.11', join(rootfs, 'usr/lib/')])
  await run('umoci', ['repack', '--image', `${join(work, 'src')}:v1`, join(work, 'bundle')])
  const { stdout: du } = await run('du', ['-sb', rootfs])
  const rootfsBytes = Number(du.split('\t')[0])

  // --- what the workload opens, on the local rootfs ---
  const trace = join(work, 'trace')
  await run('strace', ['-f', '-qq', '-e', 'trace=openat,open,execve', '-o', trace, 'chroot', rootfs, ...WORKLOAD])
  const opened = new Set()
  for (const line of (await readFile(trace, 'utf8')).split('\n')) {
    // files opened, and the binaries executed (python3.11 itself is mapped, not opened)
    const m = /(?:open(?:at)?|execve)\((?:AT_FDCWD, )?"([^"]+)".*= \d+$/.exec(line)
    if (m) opened.add(m[1])
  }
  let openedBytes = 0; let openedFiles = 0
  for (const f of opened) {
    const s = await stat(join(rootfs, f)).catch(() => null)
    if (s?.isFile()) { openedBytes += s.size; openedFiles++ }
  }
  const t0 = process.hrtime.bigint()
  await run('chroot', [rootfs, ...WORKLOAD])
  const localWarmMs = Number(process.hrtime.bigint() - t0) / 1e6

  const results = []
  for (const cs of sizes) {
    const ref = `oci:${join(work, `lazy-${cs}`)}:v1`
    await convertImage(`oci:${join(work, 'src')}:v1`, ref, { chunkSize: cs })
    const { stdout: img } = await run('du', ['-sb', join(work, `lazy-${cs}`, 'blobs')])
    const trace = join(work, `trace-${cs}.json`)
    const runs = [
      { mode: 'erofs', ref, extra: ['--record-trace', trace] },
      { mode: 'fuse', ref, extra: [] },
      // the trace the first run recorded, stored in the image: prefetched from mount on, beside the workload
      { mode: 'erofs', ref: `oci:${join(work, `traced-${cs}`)}:v1`, extra: [], traced: true }
    ]
    for (const r of runs) {
      const { mode } = r
      if (r.traced) await run(process.execPath, [CLI, 'image', 'convert', '--source', `oci:${join(work, 'src')}:v1`, '--target', r.ref, '--chunk-size', String(cs), '--prefetch-trace', trace])
      const tag = `${cs}-${mode}${r.traced ? '-traced' : ''}`
      const mnt = join(work, `mnt-${tag}`); const state = join(work, `state-${tag}`)
      await mkdir(mnt)
      const t1 = process.hrtime.bigint()
      const p = spawn(process.execPath, [CLI, 'image', 'mount', r.ref, mnt, '--mode', mode, '--state', state, '--chunks', join(work, `chunks-${tag}`), ...r.extra, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
      children.add(p)
      let err = ''
      p.stderr.on('data', d => { err += d })
      const exited = new Promise(resolve => p.once('exit', resolve))
      await new Promise((resolve, reject) => { p.stdout.once('data', resolve); p.once('exit', () => reject(new Error(`mount failed: ${err}`))) })
      const mountedMs = Number(process.hrtime.bigint() - t1) / 1e6
      await run('timeout', ['-s', 'KILL', '120', 'chroot', mnt, ...WORKLOAD])
      const totalMs = Number(process.hrtime.bigint() - t1) / 1e6
      p.kill('SIGTERM')
      await exited
      children.delete(p)
      const stats = JSON.parse(err.split('\n').find(l => l.includes('"unmounted"')))
      results.push({
        chunkSize: cs, mode, prefetchTrace: r.traced === true, imageBlobBytes: Number(img.split('\t')[0]), mountMs: Math.round(mountedMs), mountToExitMs: Math.round(totalMs),
        fetchedBytes: stats.store.fetchedBytes, fetchedStoredBytes: stats.server.fetchedStoredBytes, chunksFetched: stats.store.fetches, fuseReadBytes: stats.server.bytesRead,
        fetchedPerOpenedFileBytes: +(stats.store.fetchedBytes / openedBytes).toFixed(3),
        fetchedStoredPerOpenedFileBytes: +(stats.server.fetchedStoredBytes / openedBytes).toFixed(3),
        fetchedPerFuseReadBytes: +(stats.store.fetchedBytes / Math.max(1, stats.server.bytesRead)).toFixed(3)
      })
      log(JSON.stringify(results.at(-1)))
    }
  }
  process.stdout.write(JSON.stringify({ bench: 'lazy', workload: WORKLOAD.join(' '), rootfsBytes, openedFiles, openedFileBytes: openedBytes, localWarmMs: Math.round(localWarmMs), results }) + '\n')
} finally {
  for (const p of children) p.kill('SIGKILL')
  const { stdout } = await run('sh', ['-c', `grep -F ' ${work}/' /proc/self/mountinfo | cut -d' ' -f5 | sort -r`]).catch(() => ({ stdout: '' }))
  for (const m of stdout.split('\n').filter(Boolean)) await run('umount', ['-l', m]).catch(() => {})
  await rm(work, { recursive: true, force: true })
}
