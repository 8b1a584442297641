/**
 * Containers start from LAZY images: a converted image (guoce image convert) pushed to a local distribution
 * registry, pulled by a CRI client (gRPC PullImage to containerd 1.6's CRI plugin, containerd configured with
 * deploy/containerd/config.toml) through `guoce daemon --snapshotter-socket` WITHOUT --snapshotter-layout:
 * the registry mounter fetches the manifest, config and metadata layers from the registry, mounts each
 * metadata layer file-backed with device= files of the daemon's FUSE blob server, and containerd downloads no
 * layer. A container runs from the image and prints what it reads, while the image's large file it never
 * reads is never fetched: the chunks the daemon's node chunk store fetched (its /metrics) and the bytes the
 * daemon downloaded are counted against the image's. Then: the daemon SIGKILLed and restarted mounts the lazy
 * layers again over its new blob server and new containers start; a metadata layer the registry serves with
 * other bytes fails the pull (no file, no snapshot); labels that name a layer under another chain id (forged)
 * are declined (an ordinary snapshot); removing the images unmounts every lazy layer.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import * as grpc from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { criPullImage } from './cri-client.js'
import { unixFetch } from '@guoce/interface'
import { snapshotsClient } from '@guoce/snapshotter'
import { ANNOTATION_BLOBS, readChunkTable } from '@guoce/image'
import { MEDIA_TYPE_PREFETCH, attachPrefetchTrace } from '@guoce/lazy-mount'
import { ROOT, busyboxImage, runGuoce, startContainerd, startGuoce, startRegistry, stopAll, unmountUnder, until, type Containerd, type Proc, type Registry } from '@guoce/testkit'

const exec = promisify(execFile)

interface Descriptor { digest: string, mediaType: string, size: number, annotations?: Record<string, string> }
interface Manifest { layers: Descriptor[], config: { digest: string } }

const BIG = 48 << 20
const META = 'application/vnd.oci.image.layer.guoce.erofs.v1'
const BLOB = 'application/vnd.oci.image.layer.guoce.blob.v1'

/** A Prometheus counter or gauge (summed over its labels) from the text exposition. */
function metric (text: string, name: string): number {
  let sum = 0
  let seen = false
  for (const l of text.split('\n')) {
    const m = new RegExp(`^${name}(\\{[^}]*\\})? ([0-9.e+-]+)$`).exec(l)
    if (m !== null) { sum += Number(m[2]); seen = true }
  }
  if (!seen) throw new Error(`no metric ${name}`)
  return sum
}

describe('CRI pulls a converted image lazily from its registry through the guoce snapshotter', () => {
  let T = ''
  const tag = randomBytes(4).toString('hex')
  const id = `guoce-lazy-${tag}`
  let cd: Containerd | undefined
  let registry: Registry | undefined
  let image = ''
  let manifest: Manifest
  let manifestDigest = ''
  let daemon: Proc | undefined
  let daemonArgs: string[] = []

  beforeAll(async () => {
    T = await mkdtemp(join(tmpdir(), 'guoce-lazy-'))
    await busyboxImage(join(T, 'src'), 'v1', [
      async r => {
        await writeFile(join(r, 'greeting'), 'hello from a lazy image\n')
        // never read by the container: its chunks must never be fetched
        await writeFile(join(r, 'big'), randomBytes(BIG))
      },
      async r => { await writeFile(join(r, 'second'), 'layer 2\n') }
    ])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src')}:v1`, '--target', `oci:${join(T, 'lazy')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    manifestDigest = JSON.parse(conv.stdout).manifestDigest as string
    manifest = JSON.parse(await readFile(join(T, 'lazy', 'blobs', 'sha256', manifestDigest.slice(7)), 'utf8')) as Manifest

    registry = await startRegistry(join(T, 'registry'))
    image = `${registry.host}/guoce/lazy:v1`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy')}:v1`, `docker://${image}`])
    await rm(join(T, 'lazy'), { recursive: true, force: true }) // only the registry has the image now
    await mkdir(join(T, 'hosts', registry.host), { recursive: true })
    await writeFile(join(T, 'hosts', registry.host, 'hosts.toml'),
      `server = "http://${registry.host}"\n[host."http://${registry.host}"]\n  capabilities = ["pull", "resolve"]\n`)

    const sched = await startGuoce(['scheduler', '--open', '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'sched')])
    daemonArgs = ['daemon', '--open', '--scheduler', sched.ready.addr as string, '--listen', '/ip4/127.0.0.1/tcp/0', '--data', join(T, 'daemon'),
      '--api', `unix:${join(T, 'api.sock')}`, '--snapshotter-socket', join(T, 'snap.sock')]
    daemon = await startGuoce(daemonArgs)
    const snippet = (await readFile(join(ROOT, 'deploy', 'containerd', 'config.toml'), 'utf8')).replace(/^version = 2$/m, '')
    cd = await startContainerd({ dir: join(T, 'c'), cri: { hostsDir: join(T, 'hosts') }, extra: snippet.replaceAll('/run/guoce/snapshotter.sock', join(T, 'snap.sock')) })
  })

  afterAll(async () => {
    await cd?.stop()
    // the daemon serves the blob files under every lazy layer: abort its FUSE connection first, so that no
    // unmount below can wait on a server that is gone or stuck
    if (T !== '') await unmountUnder(T)
    await stopAll()
    await registry?.stop()
    if (T !== '') await rm(T, { recursive: true, force: true })
  })

  it('mounts the layers from the registry, containerd fetches none, a container runs and most chunks are never fetched', async () => {
    expect(await criPullImage(cd!.address, image)).toMatch(/^sha256:[0-9a-f]{64}$/)

    // every layer is a remote snapshot; each metadata layer an EROFS mount whose devices are the daemon's FUSE files
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { remote?: { layerDigest: string } }]> }
    expect(meta.snapshots.filter(([, r]) => r.remote !== undefined).map(([, r]) => r.remote!.layerDigest).sort()).toEqual(manifest.layers.map(l => l.digest).sort())
    const mountinfo = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')
    expect(mountinfo.filter(l => l.includes(join(T, 'daemon', 'snapshotter', 'snapshots')) && / - erofs /.test(l))).toHaveLength(manifest.layers.filter(l => l.mediaType === META).length)
    expect(mountinfo.filter(l => l.includes(join(T, 'daemon', 'snapshotter', 'lazy', 'fuse-')) && / - fuse/.test(l))).toHaveLength(1) // one blob server for all layers

    // containerd downloaded no layer, and nobody fetched a data blob whole
    const content = await cd!.ctr(['content', 'ls', '-q'], { namespace: 'k8s.io' })
    for (const l of manifest.layers) expect(content).not.toContain(l.digest)
    const gets = registry!.log.filter(l => /GET/.test(l) && /\/blobs\//.test(l))
    expect(gets.some(g => g.includes(manifest.config.digest))).toBe(true) // the log does show blob fetches

    const api = join(T, 'api.sock')
    const metrics = async (): Promise<string> => await (await unixFetch(api, '/metrics')).text()
    const before = await metrics()
    expect(metric(before, 'guoce_snapshotter_chunks_fetched_total')).toBe(0) // a pull fetches no chunk

    cd!.track('k8s.io', id)
    const out = await cd!.ctr(['run', '--snapshotter', 'guoce', ...cd!.runArgs(), '--rm', image, id, '/bin/busybox', 'sh', '-c', '/bin/busybox cat /greeting /second; /bin/busybox ls -l /big | /bin/busybox awk \'{print $5}\''], { namespace: 'k8s.io' })
    expect(out).toBe(`hello from a lazy image\nlayer 2\n${BIG}\n`)

    const after = await metrics()
    const total = metric(after, 'guoce_snapshotter_chunks')
    const fetched = metric(after, 'guoce_snapshotter_chunks_fetched_total')
    const fetchedBytes = metric(after, 'guoce_snapshotter_chunk_bytes_fetched_total')
    const downloaded = metric(after, 'guoce_peer_download_bytes_total')
    const blobBytes = manifest.layers.filter(l => l.mediaType === BLOB).reduce((a, l) => a + l.size, 0)
    console.log(JSON.stringify({ chunks: total, fetched, fetchedBytes, downloaded, blobBytes, failedReads: metric(after, 'guoce_snapshotter_failed_reads_total') }))
    expect(metric(after, 'guoce_snapshotter_failed_reads_total')).toBe(0)
    expect(total).toBeGreaterThanOrEqual(BIG >> 20) // the big file alone is 48 chunks of 1 MiB
    expect(fetched).toBeGreaterThan(0) // busybox and the files it read
    expect(fetched / total).toBeLessThan(0.2)
    expect(downloaded).toBeGreaterThan(0)
    expect(downloaded / blobBytes).toBeLessThan(0.35) // pieces of the blobs, not the blobs
  })

  it('after the daemon is killed and restarted, its lazy layers are mounted again over the new blob server and new containers start', async () => {
    const erofs = async (): Promise<string[]> => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(l => l.includes(join(T, 'daemon', 'snapshotter', 'snapshots')) && / - erofs /.test(l))
    const before = await erofs()
    expect(before.length).toBeGreaterThan(0)
    await daemon!.kill('SIGKILL')
    daemon = await startGuoce(daemonArgs, { env: { GUOCE_LOG: 'info' } })
    await until(async () => { try { await cd!.ctr(['snapshots', '--snapshotter', 'guoce', 'ls'], { namespace: 'k8s.io', timeoutMs: 10_000 }); return true } catch { return false } }, 'containerd to reconnect', 15_000, 200)
    // every lazy layer mounted anew by the new daemon (its log says so per layer; mount ids cannot tell: the
    // kernel hands a freed id out again), and as many layer mounts as before, the dead ones gone
    const remounted = (): number => daemon!.stderr.filter(l => l.includes('"lazy layer mounted"')).length
    await until(async () => remounted() >= before.length, 'the lazy layers mounted again', 15_000, 100)
    expect(remounted()).toBe(before.length)
    const after = await erofs()
    expect(after).toHaveLength(before.length)
    const fuse = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(l => l.includes(join(T, 'daemon', 'snapshotter', 'lazy', 'fuse-')))
    expect(fuse).toHaveLength(1) // the dead one detached
    const out = await cd!.ctr(['run', '--snapshotter', 'guoce', ...cd!.runArgs(), '--rm', image, `${id}-again`, '/bin/busybox', 'cat', '/greeting'], { namespace: 'k8s.io' })
    expect(out).toBe('hello from a lazy image\n')
  })

  it('a metadata layer the registry serves with other bytes fails the pull with a clear error and leaves no file', async () => {
    await busyboxImage(join(T, 'src2'), 'v1', [async r => { await writeFile(join(r, 'greeting'), 'tampered image\n') }])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src2')}:v1`, '--target', `oci:${join(T, 'lazy2')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const m2 = JSON.parse(await readFile(join(T, 'lazy2', 'blobs', 'sha256', (JSON.parse(conv.stdout).manifestDigest as string).slice(7)), 'utf8')) as Manifest
    const image2 = `${registry!.host}/guoce/tampered:v1`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy2')}:v1`, `docker://${image2}`])
    // the registry's stored bytes of the metadata layer flipped (same length): what a hostile registry sends
    const metaLayer = m2.layers.find(l => l.mediaType === META)!
    const hex = metaLayer.digest.slice(7)
    const stored = join(T, 'registry', 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data')
    const bytes = await readFile(stored)
    bytes[bytes.length >> 1] ^= 0xff
    await writeFile(stored, bytes)
    await expect(criPullImage(cd!.address, image2)).rejects.toThrow(/hash|digest/i)
    const files = await readdir(join(T, 'daemon', 'snapshotter', 'lazy', 'meta'))
    expect(files.filter(f => f.startsWith(hex))).toEqual([]) // neither the layer nor a partial file
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { remote?: { layerDigest: string } }]> }
    expect(meta.snapshots.filter(([, r]) => r.remote?.layerDigest === metaLayer.digest)).toEqual([])
  })

  it('declines a layer whose labels name it under another chain id, and a manifest the registry does not have', async () => {
    const client = snapshotsClient(join(T, 'snap.sock'))
    const prepare = async (key: string, labels: Record<string, string>): Promise<{ mounts: unknown[] }> => await new Promise((resolve, reject) => {
      client.Prepare({ key, parent: '', labels }, (err: grpc.ServiceError | null, res?: { mounts: unknown[] }) => { if (err != null) reject(err); else resolve(res!) })
    })
    const metaLayer = manifest.layers.find(l => l.mediaType === META)!
    const base = { 'containerd.io/snapshot/cri.image-ref': image, 'containerd.io/snapshot/cri.layer-digest': metaLayer.digest, 'containerd.io/snapshot/cri.manifest-digest': manifestDigest }
    try {
      // a forged chain id: an ordinary (empty, writable) snapshot, not the image's layer
      const forged = await prepare(`k8s.io/1/forged-${tag}`, { ...base, 'containerd.io/snapshot.ref': `sha256:${'ab'.repeat(32)}` })
      expect(forged.mounts).toHaveLength(1)
      // a manifest digest the registry does not have
      const missing = await prepare(`k8s.io/1/missing-${tag}`, { ...base, 'containerd.io/snapshot.ref': `sha256:${'cd'.repeat(32)}`, 'containerd.io/snapshot/cri.manifest-digest': `sha256:${'ef'.repeat(32)}` })
      expect(missing.mounts).toHaveLength(1)
    } finally { client.close() }
  })

  it('an image with a prefetch list: containerd pulls it (the list is no layer to it), and the listed chunks are fetched before any container reads them', async () => {
    await busyboxImage(join(T, 'src3'), 'v1', [async r => { await writeFile(join(r, 'listed'), randomBytes(8 << 20)) }])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src3')}:v1`, '--target', `oci:${join(T, 'lazy3')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const m3 = JSON.parse(await readFile(join(T, 'lazy3', 'blobs', 'sha256', (JSON.parse(conv.stdout).manifestDigest as string).slice(7)), 'utf8')) as Manifest
    const metaLayer = m3.layers.find(l => l.mediaType === META)!
    const blobs = JSON.parse(metaLayer.annotations![ANNOTATION_BLOBS]!) as string[]
    // four whole chunks of the random file (1 MiB each; not busybox's, which the node holds already), named as
    // `guoce image mount --record-trace` names chunks
    const bb = await readFile('/bin/busybox')
    const held = new Set(Array.from({ length: Math.ceil(bb.length / (1 << 20)) }, (_, i) => createHash('sha256').update(bb.subarray(i << 20, (i + 1) << 20)).digest('hex')))
    const listed = (await readChunkTable(join(T, 'lazy3', 'blobs', 'sha256', metaLayer.digest.slice(7)))).entries.filter(e => e.length === 1 << 20 && !held.has(e.digest.toString('hex'))).slice(0, 4)
    expect(listed).toHaveLength(4)
    await writeFile(join(T, 'trace3.json'), JSON.stringify({ version: 1, chunks: listed.map(e => ({ blob: blobs[e.device - 1], blkaddr: e.blkaddr })) }))
    await attachPrefetchTrace(`oci:${join(T, 'lazy3')}:v1`, join(T, 'trace3.json'))
    const image3 = `${registry!.host}/guoce/prefetch:v1`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy3')}:v1`, `docker://${image3}`])

    const api = join(T, 'api.sock')
    const metrics = async (): Promise<string> => await (await unixFetch(api, '/metrics')).text()
    const before = await metrics()
    expect(await criPullImage(cd!.address, image3)).toMatch(/^sha256:[0-9a-f]{64}$/)
    // no container ran: the four listed chunks come in by themselves
    await until(async () => metric(await metrics(), 'guoce_snapshotter_prefetched_chunks_total') - metric(before, 'guoce_snapshotter_prefetched_chunks_total') === 4, 'the prefetch list to be fetched', 30_000, 100)
    const after = await metrics()
    expect(metric(after, 'guoce_snapshotter_chunks_fetched_total') - metric(before, 'guoce_snapshotter_chunks_fetched_total')).toBeGreaterThanOrEqual(4)
    expect(metric(after, 'guoce_snapshotter_failed_reads_total')).toBe(0)
    // the list carries each entry's extent: its chunks were fetched from the first layer's Prepare on
    expect(daemon!.stderr.some(l => l.includes('lazy prefetch done') && l.includes('"early":true') && l.includes('"chunks":4'))).toBe(true)
    // the image's two layers are remote snapshots; the list is not a layer
    const meta = JSON.parse(await readFile(join(T, 'daemon', 'snapshotter', 'metadata.json'), 'utf8')) as { snapshots: Array<[string, { remote?: { layerDigest: string } }]> }
    const remote = new Set(meta.snapshots.filter(([, r]) => r.remote !== undefined).map(([, r]) => r.remote!.layerDigest))
    expect(m3.layers.filter(l => remote.has(l.digest)).map(l => l.mediaType).sort()).toEqual([BLOB, META].sort())
  })

  it('a prefetch list the registry serves with other bytes fails the pull (containerd checks it) and is not used', async () => {
    await busyboxImage(join(T, 'src4'), 'v1', [async r => { await writeFile(join(r, 'listed'), randomBytes(2 << 20)) }])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src4')}:v1`, '--target', `oci:${join(T, 'lazy4')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const m4 = JSON.parse(await readFile(join(T, 'lazy4', 'blobs', 'sha256', (JSON.parse(conv.stdout).manifestDigest as string).slice(7)), 'utf8')) as Manifest
    const metaLayer = m4.layers.find(l => l.mediaType === META)!
    const blob = (JSON.parse(metaLayer.annotations![ANNOTATION_BLOBS]!) as string[])[0]!
    const e = (await readChunkTable(join(T, 'lazy4', 'blobs', 'sha256', metaLayer.digest.slice(7)))).entries.at(-1)!
    await writeFile(join(T, 'trace4.json'), JSON.stringify({ version: 1, chunks: [{ blob, blkaddr: e.blkaddr }] }))
    const { manifestDigest } = await attachPrefetchTrace(`oci:${join(T, 'lazy4')}:v1`, join(T, 'trace4.json'))
    const list = (JSON.parse(await readFile(join(T, 'lazy4', 'blobs', 'sha256', manifestDigest.slice(7)), 'utf8')) as Manifest).layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)!
    const image4 = `${registry!.host}/guoce/prefetch-bad:v1`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy4')}:v1`, `docker://${image4}`])
    const stored = registry!.blobFile(list.digest)
    const bytes = await readFile(stored)
    bytes[bytes.length >> 1] ^= 0x01 // same length, other bytes
    await writeFile(stored, bytes)

    const api = join(T, 'api.sock')
    const metrics = async (): Promise<string> => await (await unixFetch(api, '/metrics')).text()
    const before = await metrics()
    // containerd fetches the list too (a manifest entry of no layer type) and checks its digest: the pull fails
    await expect(criPullImage(cd!.address, image4)).rejects.toThrow(/digest/i)
    // and the snapshotter, which fetched it for the top layer (or not, when containerd failed first), used none of it
    const refused = daemon!.stderr.filter(l => l.includes('lazy prefetch list not used'))
    expect(refused.every(l => l.includes(list.digest))).toBe(true)
    expect(metric(await metrics(), 'guoce_snapshotter_prefetched_chunks_total')).toBe(metric(before, 'guoce_snapshotter_prefetched_chunks_total'))
  })

  it('a prefetch list whose extent lies (another chunk\'s bytes under a listed digest): what it fetched is refused, and a container reads the right bytes', async () => {
    const a = randomBytes(1 << 20); const b = randomBytes(1 << 20)
    await busyboxImage(join(T, 'src5'), 'v1', [async r => { await writeFile(join(r, 'a'), a); await writeFile(join(r, 'b'), b) }])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src5')}:v1`, '--target', `oci:${join(T, 'lazy5')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const blobPath = (d: string): string => join(T, 'lazy5', 'blobs', 'sha256', d.slice(7))
    const m5 = JSON.parse(await readFile(blobPath(JSON.parse(conv.stdout).manifestDigest as string), 'utf8')) as Manifest
    const metaLayer = m5.layers.find(l => l.mediaType === META)!
    const blob = (JSON.parse(metaLayer.annotations![ANNOTATION_BLOBS]!) as string[])[0]!
    const entries = (await readChunkTable(blobPath(metaLayer.digest))).entries
    const sha = (x: Buffer): string => createHash('sha256').update(x).digest('hex')
    const ea = entries.find(e => e.digest.toString('hex') === sha(a))!
    const eb = entries.find(e => e.digest.toString('hex') === sha(b))!
    await writeFile(join(T, 'trace5.json'), JSON.stringify({ version: 1, chunks: [{ blob, blkaddr: ea.blkaddr }] }))
    const { manifestDigest } = await attachPrefetchTrace(`oci:${join(T, 'lazy5')}:v1`, join(T, 'trace5.json'))
    // the list names a's digest but b's stored bytes; the manifest and index are rewritten to match the list,
    // as the image's publisher could (containerd's digest checks pass)
    const m = JSON.parse(await readFile(blobPath(manifestDigest), 'utf8')) as Manifest & { layers: Descriptor[] }
    const listDesc = m.layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)!
    const list = JSON.parse(await readFile(blobPath(listDesc.digest), 'utf8')) as { chunks: Array<{ extent: { storedOffset: number, storedLength: number, digest: string } }> }
    expect(list.chunks[0]!.extent.digest).toBe(sha(a))
    Object.assign(list.chunks[0]!.extent, { storedOffset: eb.storedOffset, storedLength: eb.storedLength })
    const put = async (x: Buffer): Promise<{ digest: string, size: number }> => { const d = `sha256:${sha(x)}`; await writeFile(blobPath(d), x); return { digest: d, size: x.length } }
    Object.assign(listDesc, await put(Buffer.from(JSON.stringify(list))))
    const md = await put(Buffer.from(JSON.stringify(m)))
    const index = JSON.parse(await readFile(join(T, 'lazy5', 'index.json'), 'utf8')) as { manifests: Descriptor[] }
    Object.assign(index.manifests[0]!, md)
    await writeFile(join(T, 'lazy5', 'index.json'), JSON.stringify(index))
    const image5 = `${registry!.host}/guoce/prefetch-lies:v1`
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy5')}:v1`, `docker://${image5}`])

    const api = join(T, 'api.sock')
    const metrics = async (): Promise<string> => await (await unixFetch(api, '/metrics')).text()
    const before = await metrics()
    expect(await criPullImage(cd!.address, image5)).toMatch(/^sha256:[0-9a-f]{64}$/)
    await until(async () => metric(await metrics(), 'guoce_snapshotter_prefetch_failed_total') > metric(before, 'guoce_snapshotter_prefetch_failed_total'), 'the lying entry to be given up', 30_000, 100)
    expect(metric(await metrics(), 'guoce_snapshotter_refused_chunks_total')).toBeGreaterThan(metric(before, 'guoce_snapshotter_refused_chunks_total'))
    const id5 = `lies-${randomBytes(3).toString('hex')}`
    cd!.track('k8s.io', id5)
    const out = await cd!.ctr(['run', '--snapshotter', 'guoce', ...cd!.runArgs(), '--rm', image5, id5, '/bin/busybox', 'sha256sum', '/a', '/b'], { namespace: 'k8s.io' })
    expect(out).toBe(`${sha(a)}  /a\n${sha(b)}  /b\n`)
    expect(metric(await metrics(), 'guoce_snapshotter_failed_reads_total')).toBe(0)
  })

  it('removing the images lets containerd\'s GC remove every lazy layer through the snapshotter: unmounted', async () => {
    const names = (await cd!.ctr(['images', 'ls', '-q'], { namespace: 'k8s.io' })).trim().split('\n').filter(n => n !== '')
    expect(names).toContain(image)
    await cd!.ctr(['images', 'rm', '--sync', ...names], { namespace: 'k8s.io' })
    const erofs = async (): Promise<number> => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(l => l.includes(join(T, 'daemon', 'snapshotter', 'snapshots')) && / - erofs /.test(l)).length
    await until(async () => await erofs() === 0, 'containerd\'s GC to remove the lazy layers', 20_000, 200)
  })
})
