/**
 * The guoce snapshotter under a real containerd 1.6 + runc (Debian), started by the test with its own
 * config: an ordinary OCI image (busybox, built by umoci) is imported and unpacked through the snapshotter
 * (`[proxy_plugins.guoce]`) and runs with `ctr run --snapshotter guoce`; the snapshotter (in `guoce daemon
 * --snapshotter-socket`) is killed with SIGKILL and restarted while a container runs: the container keeps
 * running and writing through its overlay, and new containers start after the restart; removing the
 * containers and the image lets containerd's garbage collector remove every snapshot through us.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { busyboxImage, startContainerd, startGuoce, stopAll, until, type Containerd, type Proc } from '@guoce/testkit'

const exec = promisify(execFile)

describe('containerd with the guoce snapshotter', () => {
  let T = ''
  const tag = randomBytes(4).toString('hex')
  const ids = { first: `guoce-first-${tag}`, long: `guoce-long-${tag}`, after: `guoce-after-${tag}` }
  const image = `guoce.test/busybox-${tag}:v1`
  let cd: Containerd | undefined
  let daemon: Proc | undefined
  let daemonArgs: string[] = []
  const ctr = async (args: string[], timeoutMs = 60_000): Promise<string> => await cd!.ctr(args, { timeoutMs })
  const run = (id: string, args: string[]): string[] => { cd!.track('default', id); return ['run', '--snapshotter', 'guoce', ...cd!.runArgs(), ...args, image, id] }

  beforeAll(async () => {
    T = await mkdtemp(join(tmpdir(), 'guoce-ctrd-'))
    // the image: busybox with a file, one layer, an OCI archive ctr can import
    await busyboxImage(join(T, 'img'), 'v1', [async r => { await writeFile(join(r, 'greeting'), 'hello from an ordinary image\n') }])
    await exec('tar', ['-C', join(T, 'img'), '-cf', join(T, 'img.tar'), '.'])

    // scheduler + daemon with the snapshotter socket
    const sched = await startGuoce(['scheduler', '--open', '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'sched')])
    daemonArgs = ['daemon', '--open', '--scheduler', sched.ready.addr as string, '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'daemon'),
      '--api', `unix:${join(T, 'api.sock')}`, '--snapshotter-socket', join(T, 'snap.sock')]
    daemon = await startGuoce(daemonArgs)
    expect(daemon.ready.snapshotter).toBe(join(T, 'snap.sock'))
    cd = await startContainerd({ dir: join(T, 'c'), snapshotters: { guoce: join(T, 'snap.sock') } })
  })

  afterAll(async () => {
    await cd?.stop()
    await stopAll()
    if (T !== '') await rm(T, { recursive: true, force: true })
  })

  it('imports and runs an ordinary OCI image through the snapshotter', async () => {
    await ctr(['images', 'import', '--snapshotter', 'guoce', '--base-name', image.replace(/:v1$/, ''), join(T, 'img.tar')])
    expect(await ctr(['images', 'ls', '-q'])).toContain(image)
    const snaps = await ctr(['snapshots', '--snapshotter', 'guoce', 'ls'])
    expect(snaps).toMatch(/sha256:[0-9a-f]{64}\s+Committed/) // the layer, unpacked through us
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { kind: string }]> }
    expect(meta.snapshots.some(([k, r]) => k.startsWith('default/') && r.kind === 'committed')).toBe(true)
    const out = await ctr([...run(ids.first, ['--rm']), '/bin/busybox', 'cat', '/greeting'])
    expect(out).toBe('hello from an ordinary image\n')
  })

  it('a container keeps running while the snapshotter is killed and restarted; new containers start after', async () => {
    await ctr([...run(ids.long, ['-d']), '/bin/busybox', 'sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /beat; /bin/busybox sleep 0.1; done'])
    // its upper directory, from the snapshotter's own metadata (the active snapshot named by the container id)
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { id: number, kind: string }]> }
    const active = meta.snapshots.find(([k, r]) => k.endsWith(`/${ids.long}`) && r.kind === 'active')
    expect(active).toBeDefined()
    const beatFile = join(T, 'daemon', 'snapshotter', 'snapshots', String(active![1].id), 'fs', 'beat')
    const beat = async (): Promise<number> => Number((await readFile(beatFile, 'utf8').catch(() => '0')).trim())
    await until(async () => await beat() > 2, 'the container to beat', 20_000)

    await daemon!.kill('SIGKILL')
    const atKill = await beat()
    await until(async () => await beat() > atKill + 5, 'the container to go on beating without the snapshotter', 20_000)
    await expect(ctr(['snapshots', '--snapshotter', 'guoce', 'ls'], 20_000)).rejects.toThrow() // nobody serves the socket
    expect(await ctr(['task', 'ls'])).toMatch(new RegExp(`${ids.long}\\s+\\d+\\s+RUNNING`))

    daemon = await startGuoce(daemonArgs)
    // containerd redials a proxy plugin with backoff (at most 3 s apart): calls before that fail UNAVAILABLE
    const t0 = Date.now()
    await until(async () => { try { await ctr(['snapshots', '--snapshotter', 'guoce', 'ls'], 10_000); return true } catch { return false } }, 'containerd to reconnect to the snapshotter', 15_000, 200)
    console.log(`containerd reconnected to the restarted snapshotter ${Date.now() - t0} ms after it was ready`)
    const out = await ctr([...run(ids.after, ['--rm']), '/bin/busybox', 'sh', '-c', '/bin/busybox cat /greeting; echo after restart'])
    expect(out).toBe('hello from an ordinary image\nafter restart\n')
    const atRestart = await beat()
    await until(async () => await beat() > atRestart + 3, 'the container to beat after the restart', 20_000)
    expect(await ctr(['snapshots', '--snapshotter', 'guoce', 'ls'])).toContain(ids.long)

    // tear down in containerd's order: task, container (its snapshot), image (its layers, by the GC)
    await ctr(['task', 'kill', '-s', 'SIGKILL', ids.long])
    await until(async () => { try { await ctr(['task', 'delete', ids.long]); return true } catch { return false } }, 'task delete', 20_000, 200)
    await ctr(['container', 'delete', ids.long])
    await ctr(['images', 'rm', '--sync', image])
    await until(async () => (await ctr(['snapshots', '--snapshotter', 'guoce', 'ls'])).trim().split('\n').length === 1, 'containerd\'s GC to remove every snapshot through us', 20_000, 200)
    expect(await readdir(join(T, 'daemon', 'snapshotter', 'snapshots'))).toEqual([])
    expect(existsSync(join(T, 'daemon', 'snapshotter', 'metadata.json'))).toBe(true)
  })
})
