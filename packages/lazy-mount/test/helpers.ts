/**
 * Helpers for the lazy mount tests: the format tests' corpus as a 3-layer OCI image, reads from child
 * processes under `timeout -s KILL` (never from a process that serves a FUSE mount), and a sweep that
 * aborts and detaches every mount under a test's directory, passing or failing.
 */
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { convertImage } from '@guoce/image'
import { abortFuse, mountTable } from '../src/index.js'
import * as native from '@guoce/native-mount'

export const run = promisify(execFile)

export async function tempDir (prefix: string): Promise<string> {
  return await mkdtemp(join(tmpdir(), `guoce-lazy-${prefix}-`))
}

export interface ChildResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string, ms: number }

/** `sh -c CMD ARGS...` in a child under `timeout -s KILL`: a reader that hangs is killed, never the test. */
export async function sh (cmd: string, args: string[] = [], timeoutS = 60): Promise<ChildResult> {
  const t0 = Date.now()
  const child = spawn('timeout', ['-s', 'KILL', String(timeoutS), 'sh', '-c', cmd, 'sh', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''; let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString('latin1') })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString('latin1') })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => child.once('close', (c, s) => { resolve([c, s]) }))
  return { code, signal, stdout, stderr, ms: Date.now() - t0 }
}

/**
 * Everything a reader can see of a tree, in a stable order: per entry type, mode, owner, mtime and device
 * numbers; per file size, link count and sha256; symlink targets; xattrs.
 */
export const LIST_TREE = String.raw`
set -e
cd "$1"
export LC_ALL=C
find . -print0 | sort -z | xargs -0 stat -c '%n|%F|%a|%u|%g|%Y|%t:%T'
find . -type f -print0 | sort -z | xargs -0 stat -c '%n|%s|%h'
find . -type f -print0 | sort -z | xargs -0 sha256sum
find . -type l -print0 | sort -z | xargs -0 -n1 readlink
find . -print0 | sort -z | xargs -0 getfattr -h -d -m - -e hex
`

/** The format tests' corpus (packages/image/test/fixtures.ts) as a 3-layer image: base, edits with whiteouts, a replaced dir. */
export async function buildImage (work: string, chunkSize: number): Promise<{ src: string, lazy: string, flat: string }> {
  const fixtures = await import(join(import.meta.dirname, '..', '..', 'image', 'test', 'fixtures.ts')) as { makeRootfs: (dir: string, o: { whiteouts: boolean }) => Promise<void> }
  const w = (p: string): string => join(work, p)
  await run('umoci', ['init', '--layout', w('src')])
  await run('umoci', ['new', '--image', `${w('src')}:v1`])
  await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b1')])
  await fixtures.makeRootfs(w('b1/rootfs'), { whiteouts: false })
  await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b1')])
  await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b2')])
  await run('sh', ['-c', `set -e; R=${w('b2/rootfs')}; rm -rf "$R/deep" "$R/data/multi-copy"; printf 'changed\\n' > "$R/etc/hostname"; cp "$R/data/multi" "$R/usr/lib/multi-again"; chown 7:8 "$R/etc/passwd"; head -c 2500000 /dev/urandom > "$R/data/big"`])
  await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b2')])
  await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b3')])
  await run('sh', ['-c', `set -e; R=${w('b3/rootfs')}; rm -rf "$R/bigdir"; mkdir "$R/bigdir"; printf 'fresh\\n' > "$R/bigdir/only"; ln -sf /etc/passwd "$R/data/multi-copy"`])
  await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b3')])
  await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('flat')])
  await rm(w('b1'), { recursive: true }); await rm(w('b2'), { recursive: true }); await rm(w('b3'), { recursive: true })
  await convertImage(`oci:${w('src')}:v1`, `oci:${w('lazy')}:v1`, { chunkSize })
  return { src: w('src'), lazy: w('lazy'), flat: w('flat/rootfs') }
}

/** Aborts every FUSE connection and detaches every mount under `root` (deepest first). */
export async function sweepMounts (root: string): Promise<string[]> {
  const left = (await mountTable()).filter(m => m.point === root || m.point.startsWith(root + '/'))
  for (const m of left) if (m.fstype.startsWith('fuse')) await abortFuse(m.point)
  for (const m of [...left].reverse()) await native.umount2(m.point, native.constants.MNT_DETACH).catch(() => {})
  return left.map(m => m.point)
}

export async function mountsUnder (root: string): Promise<string[]> {
  return (await mountTable()).filter(m => m.point === root || m.point.startsWith(root + '/')).map(m => m.point)
}

/** `docker-registry serve` (distribution 2.8) on a free 127.0.0.1 port, ready once GET /v2/ answers 200. */
export async function startRegistry (dir: string, port?: number): Promise<{ host: string, port: number, stop: () => Promise<void> }> {
  const { freePort } = await import('@guoce/testkit')
  port ??= await freePort()
  const { writeFile, mkdir } = await import('node:fs/promises')
  await mkdir(join(dir, 'data'), { recursive: true })
  await writeFile(join(dir, 'registry.yml'), `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\nhttp:\n  addr: 127.0.0.1:${port}\n`)
  const proc = spawn('docker-registry', ['serve', join(dir, 'registry.yml')], { stdio: 'ignore' })
  const exited = new Promise<void>(resolve => proc.once('exit', () => { resolve() }))
  const host = `127.0.0.1:${port}`
  const stop = async (): Promise<void> => { if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGKILL'); await exited } }
  for (let i = 0; ; i++) {
    const ok = await fetch(`http://${host}/v2/`).then(r => r.status === 200, () => false)
    if (ok) break
    if (i > 200 || proc.exitCode !== null) { await stop(); throw new Error('docker-registry did not start') }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return { host, port, stop }
}
