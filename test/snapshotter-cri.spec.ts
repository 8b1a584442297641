/**
 * The remote-snapshot path with real containerd 1.6: a converted image (guoce image convert) in a local
 * distribution registry is pulled by a CRI client (gRPC PullImage to containerd's CRI plugin, as kubelet does,
 * containerd configured with deploy/containerd/config.toml); CRI's labels reach the guoce snapshotter, whose RemoteLayerMounter
 * (here the OCI layout mounter: file-backed EROFS over local blobs) mounts every layer and answers
 * ALREADY_EXISTS, so containerd downloads no layer; a container then runs from that image, and keeps running
 * across a SIGKILL and restart of the snapshotter, after which new containers start. Removing the image
 * removes (and unmounts) every layer through the snapshotter.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { criPullImage } from './cri-client.js'
import { ROOT, busyboxImage, runGuoce, startContainerd, startGuoce, startRegistry, stopAll, until, type Containerd, type Proc, type Registry } from '@guoce/testkit'

const exec = promisify(execFile)

interface Manifest { layers: Array<{ digest: string, mediaType: string }>, config: { digest: string } }

describe('CRI pulls a converted image through the guoce snapshotter', () => {
  let T = ''
  const tag = randomBytes(4).toString('hex')
  const id = `guoce-cri-${tag}`
  let cd: Containerd | undefined
  let registry: Registry | undefined
  let image = ''
  let manifest: Manifest
  let daemon: Proc | undefined
  let daemonArgs: string[] = []

  beforeAll(async () => {
    T = await mkdtemp(join(tmpdir(), 'guoce-cri-'))
    await busyboxImage(join(T, 'src'), 'v1', [
      async r => { await writeFile(join(r, 'greeting'), 'hello from a converted image\n'); await writeFile(join(r, 'gone'), 'removed by layer 2\n') },
      async r => { await rm(join(r, 'gone')); await writeFile(join(r, 'second'), 'layer 2\n') }
    ])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src')}:v1`, '--target', `oci:${join(T, 'lazy')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const mDigest = JSON.parse(conv.stdout).manifestDigest as string
    manifest = JSON.parse(await readFile(join(T, 'lazy', 'blobs', 'sha256', mDigest.slice(7)), 'utf8')) as Manifest

    registry = await startRegistry(join(T, 'registry'))
    image = `${registry.host}/guoce/app:v1-lazy`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy')}:v1`, `docker://${image}`])
    await mkdir(join(T, 'hosts', registry.host), { recursive: true })
    await writeFile(join(T, 'hosts', registry.host, 'hosts.toml'),
      `server = "http://${registry.host}"\n[host."http://${registry.host}"]\n  capabilities = ["pull", "resolve"]\n`)

    const sched = await startGuoce(['scheduler', '--open', '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'sched')])
    daemonArgs = ['daemon', '--open', '--scheduler', sched.ready.addr as string, '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'daemon'),
      '--api', `unix:${join(T, 'api.sock')}`, '--snapshotter-socket', join(T, 'snap.sock'), '--snapshotter-layout', join(T, 'lazy')]
    daemon = await startGuoce(daemonArgs)
    // the snippet users merge into their config (deploy/containerd/config.toml), with this test's socket
    const snippet = (await readFile(join(ROOT, 'deploy', 'containerd', 'config.toml'), 'utf8')).replace(/^version = 2$/m, '')
    expect(snippet).toContain('/run/guoce/snapshotter.sock')
    cd = await startContainerd({ dir: join(T, 'c'), cri: { hostsDir: join(T, 'hosts') }, extra: snippet.replaceAll('/run/guoce/snapshotter.sock', join(T, 'snap.sock')) })
  })

  afterAll(async () => {
    await cd?.stop()
    await stopAll()
    await registry?.stop()
    // layer mounts outlive the snapshotter process (containers keep them): undo what a failed test left
    const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
    for (const p of info.split('\n').map(l => l.split(' ')[4]).filter((p): p is string => p?.startsWith(T + '/') === true).reverse()) await exec('umount', ['-l', p]).catch(() => {})
    if (T !== '') await rm(T, { recursive: true, force: true })
  })

  it('mounts every layer remotely, containerd fetches none, and a container runs from the image', async () => {
    expect(await criPullImage(cd!.address, image)).toMatch(/^sha256:[0-9a-f]{64}$/)

    // every layer is a remote snapshot of ours, each mounted metadata layer a live EROFS mount
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { id: number, kind: string, labels: Record<string, string>, remote?: { layerDigest: string, imageRef: string } }]> }
    const remote = meta.snapshots.filter(([, r]) => r.remote !== undefined)
    expect(remote.map(([, r]) => r.remote!.layerDigest).sort()).toEqual(manifest.layers.map(l => l.digest).sort())
    // committed under the chain id containerd named (its metadata finds them by that label), from this image
    expect(remote.every(([k, r]) => k === r.labels['containerd.io/snapshot.ref'] && /^sha256:/.test(k) && r.kind === 'committed' && r.remote!.imageRef === image)).toBe(true)
    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8')
    const erofs = mountinfo.split('\n').filter(l => l.includes(join(T, 'daemon', 'snapshotter')) && / - erofs /.test(l))
    expect(erofs).toHaveLength(manifest.layers.filter(l => l.mediaType === 'application/vnd.oci.image.layer.guoce.erofs.v1').length)

    // containerd downloaded no layer: none in its content store, no layer GET at the registry
    const content = await cd!.ctr(['content', 'ls', '-q'], { namespace: 'k8s.io' })
    expect(content).toContain(manifest.config.digest)
    for (const l of manifest.layers) expect(content).not.toContain(l.digest)
    const blobGets = registry!.log.filter(l => /GET \/v2\/guoce\/app\/blobs\//.test(l) || /"GET".*\/blobs\//.test(l) || (/blobs\/sha256:/.test(l) && /GET/.test(l)))
    for (const l of manifest.layers) expect(blobGets.filter(g => g.includes(l.digest))).toEqual([])
    expect(blobGets.some(g => g.includes(manifest.config.digest))).toBe(true) // the log does show blob fetches

    // a container from the pulled image, on the remote layers
    cd!.track('k8s.io', id)
    const out = await cd!.ctr(['run', '--snapshotter', 'guoce', ...cd!.runArgs(), '--rm', image, id, '/bin/busybox', 'sh', '-c', '/bin/busybox cat /greeting /second; test -e /gone && echo gone-present; echo ok'], { namespace: 'k8s.io' })
    expect(out).toBe('hello from a converted image\nlayer 2\nok\n')

    // the snapshotter SIGKILLed and restarted under a running container on remote layers: it keeps reading
    // them, the restarted snapshotter finds its layer mounts in place, and a new container starts
    const long = `${id}-long`
    cd!.track('k8s.io', long)
    await cd!.ctr(['run', '-d', '--snapshotter', 'guoce', ...cd!.runArgs(), image, long, '/bin/busybox', 'sh', '-c',
      'i=0; while true; do i=$((i+1)); /bin/busybox cat /greeting > /dev/null && echo $i > /beat; /bin/busybox sleep 0.1; done'], { namespace: 'k8s.io' })
    const upper = (await cd!.ctr(['snapshots', '--snapshotter', 'guoce', 'mounts', '/x', long], { namespace: 'k8s.io' })).match(/upperdir=([^,\s]+)/)![1]!
    const beat = async (): Promise<number> => Number((await readFile(join(upper, 'beat'), 'utf8').catch(() => '0')).trim())
    await until(async () => await beat() > 2, 'the container to beat', 20_000)
    const erofsBefore = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(l => / - erofs /.test(l) && l.includes(T)).length
    await daemon!.kill('SIGKILL')
    const atKill = await beat()
    await until(async () => await beat() > atKill + 5, 'the container to go on reading its layers without the snapshotter', 20_000)
    daemon = await startGuoce(daemonArgs)
    await until(async () => { try { await cd!.ctr(['snapshots', '--snapshotter', 'guoce', 'ls'], { namespace: 'k8s.io', timeoutMs: 10_000 }); return true } catch { return false } }, 'containerd to reconnect', 15_000, 200)
    expect((await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(l => / - erofs /.test(l) && l.includes(T)).length).toBe(erofsBefore) // none mounted twice
    const again = await cd!.ctr(['run', '--snapshotter', 'guoce', ...cd!.runArgs(), '--rm', image, `${id}-again`, '/bin/busybox', 'cat', '/second'], { namespace: 'k8s.io' })
    expect(again).toBe('layer 2\n')
    const atRestart = await beat()
    await until(async () => await beat() > atRestart + 3, 'the container to beat after the restart', 20_000)
    await cd!.ctr(['task', 'kill', '-s', 'SIGKILL', long], { namespace: 'k8s.io' })
    await until(async () => { try { await cd!.ctr(['task', 'delete', long], { namespace: 'k8s.io' }); return true } catch { return false } }, 'task delete', 20_000, 200)
    await cd!.ctr(['container', 'delete', long], { namespace: 'k8s.io' })

    // removing the image lets containerd's GC remove every layer through us: unmounted, directories gone
    // (CRI names the image three ways: tag, repo digest, image id)
    const names = (await cd!.ctr(['images', 'ls', '-q'], { namespace: 'k8s.io' })).trim().split('\n')
    expect(names).toContain(image)
    await cd!.ctr(['images', 'rm', '--sync', ...names], { namespace: 'k8s.io' })
    await until(async () => (await cd!.ctr(['snapshots', '--snapshotter', 'guoce', 'ls'], { namespace: 'k8s.io' })).trim().split('\n').length === 1, 'containerd\'s GC to remove the layers', 20_000, 200)
    const after = await readFile('/proc/self/mountinfo', 'utf8')
    expect(after.split('\n').filter(l => l.includes(join(T, 'daemon', 'snapshotter')))).toEqual([])
  })
})
