/**
 * `guoce image mount erofs+http://HOST/os.erofs DIR`: a plain EROFS OS image (mkfs.erofs of a small root
 * tree: /etc/os-release, /bin/sh with its libraries, 48 MiB of other files) and its .gcidx on a local
 * origin, read through real scheduler, seed and daemon processes. Boot-like reads (a shell started in a
 * chroot of the mount) return the right bytes and fetch only a fraction of the image; a byte the origin
 * serves wrong is refused (EIO), never served; umount and SIGTERM leave nothing mounted. Every read of the
 * mount comes from a child process under `timeout -s KILL`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runGuoce, startCluster, startGuoce as start, startOrigin, stopAll, sha, type Cluster, type Origin, type Proc } from '@guoce/testkit'
import { mountsUnder, run, sh, sweepMounts, tempDir } from './helpers.js'

const MiB = 1024 * 1024
const OS_RELEASE = 'PRETTY_NAME="Guoce test OS 13"\nNAME="guoce-test"\nID=guoce\n'
let work = ''
let origin: Origin
let cluster: Cluster
let image: Buffer
let api = ''
let n = 0
const fillers: Buffer[] = []

beforeAll(async () => {
  work = await tempDir('osimg')
  const root = join(work, 'root')
  for (const d of ['etc', 'bin', 'lib/x86_64-linux-gnu', 'lib64', 'usr/share/filler']) await mkdir(join(root, d), { recursive: true })
  await writeFile(join(root, 'etc/os-release'), OS_RELEASE)
  await copyFile('/bin/dash', join(root, 'bin/sh'))
  await copyFile('/lib/x86_64-linux-gnu/libc.so.6', join(root, 'lib/x86_64-linux-gnu/libc.so.6'))
  await copyFile('/lib64/ld-linux-x86-64.so.2', join(root, 'lib64/ld-linux-x86-64.so.2'))
  for (let i = 0; i < 24; i++) { fillers.push(randomBytes(2 * MiB)); await writeFile(join(root, `usr/share/filler/f${i}`), fillers[i]!) }
  await run('mkfs.erofs', ['--quiet', '-T0', join(work, 'os.erofs'), root])
  const ix = await runGuoce(['index', join(work, 'os.erofs'), '--json'])
  expect(ix.code, ix.stderr).toBe(0)
  image = await readFile(join(work, 'os.erofs'))
  const index = await readFile(join(work, 'os.erofs.gcidx'))
  // the same image with one byte in the middle of /usr/share/filler/f5 changed, served under the good image's index
  const at = image.indexOf(fillers[5]!.subarray(MiB, MiB + 64)) + 10
  expect(at).toBeGreaterThan(10)
  const bad = Buffer.from(image); bad[at] = bad[at]! ^ 0xff
  const hugeIndex = Buffer.from(index); hugeIndex.writeUInt32LE(0xffffffff, 28)
  origin = await startOrigin({ validators: 'etag', files: { 'os.erofs': image, 'os.erofs.gcidx': index, 'bad.erofs': bad, 'bad.erofs.gcidx': index, 'noidx.erofs': image, 'trunc.erofs': image, 'trunc.erofs.gcidx': index.subarray(0, index.length - 10), 'huge.erofs': image, 'huge.erofs.gcidx': hugeIndex } })
  cluster = await startCluster({ daemons: 1 })
  api = cluster.daemons[0]!.api
})
/** mount processes of a test (stopAll would stop the cluster's processes too) */
const mounts: Proc[] = []
afterEach(async () => {
  for (const p of mounts.splice(0)) await p.kill('SIGKILL')
  expect(await sweepMounts(work), 'mounts left behind').toEqual([])
})
afterAll(async () => {
  await stopAll()
  await sweepMounts(work)
  await cluster?.close()
  await origin?.close()
  if (work !== '') await rm(work, { recursive: true, force: true })
})

async function dirs (): Promise<{ mnt: string, state: string, chunks: string }> {
  const base = join(work, `m${n++}`)
  await mkdir(join(base, 'mnt'), { recursive: true })
  return { mnt: join(base, 'mnt'), state: join(base, 'state'), chunks: join(base, 'chunks') }
}
async function startGuoce (args: string[]): Promise<Proc> {
  const p = await start(args)
  mounts.push(p)
  return p
}
const mountArgs = (name: string, d: { mnt: string, state: string, chunks: string }, extra: string[] = []): string[] =>
  ['image', 'mount', `erofs+${origin.url}/${name}`, d.mnt, '--daemon', api, '--state', d.state, '--chunks', d.chunks, '--fetch-timeout', '10s', ...extra]

describe('guoce image mount erofs+http:// (a plain EROFS OS image)', () => {
  it('boot-like reads return the right bytes and fetch only what they touch; umount undoes everything', async () => {
    const d = await dirs()
    const p = await startGuoce(mountArgs('os.erofs', d, ['--digest', `sha256:${sha(image)}`]))
    expect(p.ready).toMatchObject({ event: 'mounted', target: d.mnt })
    // the FUSE file and the EROFS mount of it
    expect((await mountsUnder(work)).length).toBe(2)
    const boot = await sh('chroot "$1" /bin/sh -c \'while IFS= read -r l; do echo "$l"; done < /etc/os-release; echo booted\'', [d.mnt], 30)
    expect(boot.code, boot.stderr).toBe(0)
    expect(boot.stdout).toBe(OS_RELEASE + 'booted\n')
    const sums = await sh('cd "$1" && sha256sum bin/sh lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2', [d.mnt], 30)
    expect(sums.code, sums.stderr).toBe(0)
    const host = await sh('sha256sum /bin/dash /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2')
    expect(sums.stdout.split('\n').map(l => l.split(' ')[0])).toEqual(host.stdout.split('\n').map(l => l.split(' ')[0]))
    const sent = origin.sent['os.erofs'] ?? 0
    process.stderr.write(`os-image.spec: boot-like reads fetched ${sent} of ${image.length} image bytes (${(100 * sent / image.length).toFixed(1)}%)\n`)
    // the shell, libc and the loader are ~2 MiB; whole 1 MiB pieces around them and the metadata: well under half
    expect(sent).toBeGreaterThan(0)
    expect(sent).toBeLessThan(image.length * 0.35)
    const um = await runGuoce(['image', 'umount', d.mnt, '--state', d.state, '--json'])
    expect(um.code, um.stderr).toBe(0)
    expect(await p.exited).toMatchObject({ code: 0 })
    expect(await mountsUnder(work)).toEqual([])
    expect(await readdir(d.state)).toEqual([])
    const stats = p.stderr.map(l => { try { return JSON.parse(l) } catch { return {} } }).find(o => o.event === 'unmounted')
    expect(stats.store.fetches).toBeGreaterThan(0)
    expect(stats.server.refused).toBe(0)
  })

  it('a chunk the origin serves wrong is refused (EIO), never served; files elsewhere read right; SIGTERM unmounts', async () => {
    const d = await dirs()
    const p = await start(mountArgs('bad.erofs', d), { env: { GUOCE_LOG: 'info' } })
    mounts.push(p)
    const r = await sh('cat "$1/usr/share/filler/f5" | sha256sum', [d.mnt], 60)
    expect(r.stderr).toMatch(/Input\/output error/)
    expect(r.stdout.split(' ')[0]).not.toBe(sha(fillers[5]!))
    const rel = await sh('cat "$1/etc/os-release"', [d.mnt], 60)
    expect(rel.stdout).toBe(OS_RELEASE)
    // a file whose chunks are far from the bad byte
    const ok = await sh('sha256sum "$1/usr/share/filler/f20"', [d.mnt], 60)
    expect(ok.code, ok.stderr + p.stderr.join('\n')).toBe(0)
    expect(ok.stdout.split(' ')[0]).toBe(sha(fillers[20]!))
    await p.kill('SIGTERM')
    expect(await mountsUnder(work)).toEqual([])
    expect(await readdir(d.state)).toEqual([])
    expect(p.stderr.join('\n')).toMatch(/"refused":[1-9]/)
  })

  it('an image without an index, with a truncated or hostile index, or a --digest the index does not declare, is refused with a clear error and nothing mounted', async () => {
    const d = await dirs()
    const noidx = await runGuoce(mountArgs('noidx.erofs', d))
    expect(noidx.code).not.toBe(0)
    expect(noidx.stderr).toMatch(/noidx\.erofs\.gcidx: cannot read a chunk index/)
    const trunc = await runGuoce(mountArgs('trunc.erofs', d))
    expect(trunc.code).not.toBe(0)
    expect(trunc.stderr).toMatch(/trunc\.erofs\.gcidx: truncated: \d+ bytes, \d+ chunks need/)
    const huge = await runGuoce(mountArgs('huge.erofs', d))
    expect(huge.code).not.toBe(0)
    expect(huge.stderr).toMatch(/huge\.erofs\.gcidx: declares \d+ chunks: at most/)
    const wrong = await runGuoce(mountArgs('os.erofs', d, ['--digest', `sha256:${'0'.repeat(64)}`]))
    expect(wrong.code).not.toBe(0)
    expect(wrong.stderr).toMatch(/--digest names sha256:0{64}/)
    const pinned = await runGuoce(mountArgs('os.erofs', d, ['--index-digest', `sha256:${'1'.repeat(64)}`]))
    expect(pinned.code).not.toBe(0)
    expect(pinned.stderr).toMatch(/--index-digest names/)
    expect(await mountsUnder(work)).toEqual([])
  })
})
