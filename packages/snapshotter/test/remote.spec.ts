/**
 * The remote-layer seam with a real mounter: layers of a converted image (guoce image convert, local OCI
 * layout) prepared with the labels CRI sends are mounted by ociLayoutMounter (file-backed EROFS with
 * `device=` the local blobs, native/mount) and committed under their ref; Prepare answers ALREADY_EXISTS,
 * as containerd's unpacker expects. A container's snapshot on top stacks them with overlayfs; other layers
 * are ordinary snapshots; a restart mounts again what is gone; removal unmounts.
 */
import { copyFile, cp, mkdir, open, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { status } from '@grpc/grpc-js'
import * as native from '@guoce/native-mount'
import { convertImage, readManifest, parseOciRef, ANNOTATION_BLOBS, MEDIA_TYPE_EROFS_META, type Manifest } from '@guoce/image'
import { attachPrefetchTrace, MEDIA_TYPE_PREFETCH } from '@guoce/lazy-mount'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startSnapshotter, ociLayoutMounter, chainIds, LABEL_REMOTE, type RunningSnapshotter } from '../src/index.js'
import { api, codeOf, isMounted, mountAll, run, tempDir, umount, type Api } from './helpers.js'

const CRI = (ref: string, layer: string, manifest: string): Record<string, string> => ({
  'containerd.io/snapshot.ref': ref,
  'containerd.io/snapshot/cri.image-ref': '127.0.0.1:5000/app:v1-lazy',
  'containerd.io/snapshot/cri.layer-digest': layer,
  'containerd.io/snapshot/cri.manifest-digest': manifest,
  'containerd.io/snapshot/cri.image-layers': layer
})

describe('remote layers through a RemoteLayerMounter', () => {
  let dir: string
  let root: string
  let running: RunningSnapshotter | undefined
  let c: Api
  let manifest: Manifest
  let manifestDigest: string
  const mounted: string[] = []
  const w = (p: string): string => join(dir, p)
  const start = async (layouts: string[], rootDir = root): Promise<void> => {
    running = await startSnapshotter({ root: rootDir, socket: w(`s-${Date.now()}.sock`), remote: ociLayoutMounter({ layouts, mounter: native }) })
    c = api(running.socket)
  }
  const stop = async (): Promise<void> => { c.close(); await running?.stop(); running = undefined }

  beforeAll(async () => {
    dir = await tempDir('remote')
    root = w('root')
    await run('umoci', ['init', '--layout', w('src')])
    await run('umoci', ['new', '--image', `${w('src')}:v1`])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b1')])
    await mkdir(w('b1/rootfs/bin'), { recursive: true })
    await copyFile('/bin/busybox', w('b1/rootfs/bin/busybox'))
    await writeFile(w('b1/rootfs/hello.txt'), 'hello from layer 1\n')
    await writeFile(w('b1/rootfs/gone.txt'), 'deleted in layer 2\n')
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b1')])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b2')])
    await rm(w('b2/rootfs/gone.txt'))
    await writeFile(w('b2/rootfs/two.txt'), 'layer 2\n')
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b2')])
    const r = await convertImage(`oci:${w('src')}:v1`, `oci:${w('lazy')}:v1`, { chunkSize: 64 * 1024 })
    manifestDigest = r.manifestDigest
    manifest = (await readManifest(parseOciRef(`oci:${w('lazy')}:v1`))).manifest
    await start([w('lazy')])
  })
  afterAll(async () => {
    for (const m of mounted.reverse()) await umount(m).catch(() => {})
    await stop().catch(() => {})
    // whatever a failed test left mounted under the snapshotter roots
    const info = await readFile('/proc/self/mountinfo', 'utf8')
    for (const p of info.split('\n').map(l => l.split(' ')[4]).filter((p): p is string => p?.startsWith(dir + '/') === true).reverse()) await umount(p).catch(() => {})
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('mounts each layer, answers ALREADY_EXISTS, and a container stacks them; removal unmounts', async () => {
    expect(manifest.layers.length).toBeGreaterThanOrEqual(3) // blobs and metadata layers
    let parent = ''
    const refs: string[] = []
    const chain = chainIds(manifest.layers.map(l => l.digest)) // the converted config's diff ids are the layer digests
    for (const [i, l] of manifest.layers.entries()) {
      const ref = chain[i]!
      // what containerd's unpacker does: Prepare "extract-<rand> <chain id>" with the labels, expect ALREADY_EXISTS
      expect(await codeOf(c.prepare({ key: `k8s.io/2/extract-${i} chain-${i}`, parent, labels: CRI(ref, l.digest, manifestDigest) }))).toBe(status.ALREADY_EXISTS)
      const info = (await c.stat({ key: ref })).info
      expect(info).toMatchObject({ name: ref, parent, kind: 'COMMITTED' })
      expect(info.labels[LABEL_REMOTE]).toBe(l.digest)
      expect(await codeOf(c.stat({ key: `k8s.io/2/extract-${i} chain-${i}` }))).toBe(status.NOT_FOUND)
      refs.push(ref)
      parent = ref
    }
    // the same layer prepared again: its ref exists
    expect(await codeOf(c.prepare({ key: 'k8s.io/3/extract-again', parent: refs.at(-2)!, labels: CRI(refs.at(-1)!, manifest.layers.at(-1)!.digest, manifestDigest) }))).toBe(status.ALREADY_EXISTS)

    const fsOf = async (ref: string): Promise<string> => {
      const v = await c.view({ key: `${ref}-probe`, parent: ref })
      const src = v.mounts[0]!.options.find(o => o.startsWith('lowerdir='))?.slice(9).split(':')[0] ?? v.mounts[0]!.source
      await c.remove({ key: `${ref}-probe` })
      return src
    }
    const metaRefs = refs.filter((_r, i) => manifest.layers[i]!.mediaType === MEDIA_TYPE_EROFS_META)
    expect(metaRefs).toHaveLength(2)
    for (const r of metaRefs) expect(await isMounted(await fsOf(r))).toBe(true)

    // the container's rootfs: an active snapshot on the chain, mounted and used
    const ctr = await c.prepare({ key: 'k8s.io/4/container', parent })
    expect(ctr.mounts[0]!.type).toBe('overlay')
    const m = w('rootfs')
    await mkdir(m)
    await mountAll(ctr.mounts, m)
    mounted.push(m)
    const out = await run('chroot', [m, '/bin/busybox', 'sh', '-c', 'B=/bin/busybox; $B cat /hello.txt /two.txt; test -e /gone.txt && echo gone-present; echo written > /new.txt; $B cat /new.txt'])
    expect(out.stdout).toBe('hello from layer 1\nlayer 2\nwritten\n')
    await umount(m)
    mounted.pop()

    // a restart after the layer mounts were lost (a reboot, an operator's umount): they come back
    await stop()
    const fs0 = join(root, 'snapshots')
    const lost = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').map(l => l.split(' ')[4]).filter((p): p is string => p?.startsWith(fs0) === true)
    expect(lost).toHaveLength(2)
    for (const p of lost) await umount(p)
    await start([w('lazy')])
    for (const p of lost) expect(await isMounted(p)).toBe(true)
    await mountAll((await c.mounts({ key: 'k8s.io/4/container' })).mounts, m)
    mounted.push(m)
    expect((await run('chroot', [m, '/bin/busybox', 'cat', '/new.txt', '/hello.txt'])).stdout).toBe('written\nhello from layer 1\n')
    await umount(m)
    mounted.pop()

    expect(await codeOf(c.remove({ key: refs[0]! }))).toBe(status.FAILED_PRECONDITION)
    await c.remove({ key: 'k8s.io/4/container' })
    for (const r of [...refs].reverse()) await c.remove({ key: r })
    for (const p of lost) expect(await isMounted(p)).toBe(false)
    expect(await readdir(fs0)).toEqual([])
  })

  it('a layer no layout holds, or hostile labels, make an ordinary snapshot', async () => {
    // a real layer of the image, named under another chain (labels an image's own annotations could forge outside CRI)
    const meta = manifest.layers.findIndex(l => l.mediaType === MEDIA_TYPE_EROFS_META)
    const forged = await c.prepare({ key: 'o/forged', labels: CRI(`sha256:${'cd'.repeat(32)}`, manifest.layers[meta]!.digest, manifestDigest) })
    expect(forged.mounts[0]!.type).toBe('bind')
    expect((await c.stat({ key: 'o/forged' })).info.kind).toBe('ACTIVE')
    await c.remove({ key: 'o/forged' })

    const other = `sha256:${'ab'.repeat(32)}`
    const a = await c.prepare({ key: 'o/extract', labels: CRI(`sha256:${'ef'.repeat(32)}`, other, manifestDigest) })
    expect(a.mounts[0]!.type).toBe('bind')
    expect((await c.stat({ key: 'o/extract' })).info.kind).toBe('ACTIVE')
    expect(await codeOf(c.stat({ key: `sha256:${'ef'.repeat(32)}` }))).toBe(status.NOT_FOUND)
    const b = await c.prepare({ key: 'o/extract2', labels: CRI('o/chain2', 'sha256:../../../etc/passwd', 'sha256:../x') })
    expect(b.mounts[0]!.type).toBe('bind')
    await c.remove({ key: 'o/extract' })
    await c.remove({ key: 'o/extract2' })
  })

  it('a layer the kernel refuses fails Prepare and leaves nothing behind', async () => {
    await cp(w('lazy'), w('bad'), { recursive: true })
    const meta = manifest.layers.find(l => l.mediaType === MEDIA_TYPE_EROFS_META)!
    const fh = await open(join(w('bad'), 'blobs', 'sha256', meta.digest.slice(7)), 'r+')
    await fh.write(Buffer.alloc(4096, 0xee), 0, 4096, 0) // superblock gone
    await fh.close()
    await stop()
    const badRoot = w('bad-root')
    await start([w('bad')], badRoot)
    try {
      expect(await codeOf(c.prepare({ key: 'b/extract', labels: CRI(chainIds(manifest.layers.map(l => l.digest))[manifest.layers.indexOf(meta)]!, meta.digest, manifestDigest) }))).toBe(status.INTERNAL)
      expect(await c.list()).toEqual([])
      expect(await readdir(join(badRoot, 'snapshots'))).toEqual([])
    } finally {
      await stop()
      await start([w('lazy')])
    }
  })

  it('a Prepare whose caller gives up aborts the layer mount and leaves nothing; the next one goes on', async () => {
    // a mounter standing in for a lazy one whose source hangs: it waits until the snapshotter aborts it
    const seen: string[] = []
    const hanging = {
      mount: async (_l: unknown, dir: string, opts: { signal?: AbortSignal }): Promise<boolean> => {
        seen.push(dir)
        return await new Promise<boolean>((_resolve, reject) => { opts.signal!.addEventListener('abort', () => { reject(opts.signal!.reason) }, { once: true }) })
      },
      unmount: async (): Promise<void> => {}
    }
    const hroot = w('hang-root')
    const h = await startSnapshotter({ root: hroot, socket: w('hang.sock'), remote: hanging })
    const hc = api(h.socket)
    try {
      const labels = CRI(`sha256:${'12'.repeat(32)}`, manifest.layers[0]!.digest, manifestDigest)
      const err = await new Promise<{ code: number }>(resolve => {
        hc.client.Prepare({ key: 'h/extract', labels }, { deadline: Date.now() + 300 }, (e: unknown) => { resolve(e as { code: number }) })
      })
      expect(err.code).toBe(status.DEADLINE_EXCEEDED)
      expect(seen).toHaveLength(1)
      // the aborted mount released the snapshotter: nothing recorded, its directory gone, the next call served
      for (let i = 0; i < 100 && (await readdir(join(hroot, 'snapshots'))).length > 0; i++) await new Promise(resolve => setTimeout(resolve, 50))
      expect(await readdir(join(hroot, 'snapshots'))).toEqual([])
      expect(await hc.list()).toEqual([])
      const plain = await hc.prepare({ key: 'h/plain' })
      expect(plain.mounts[0]!.type).toBe('bind')
    } finally {
      hc.close()
      await h.stop()
    }
  })

  it('an image with a prefetch list: its layers are taken all the same (the list is no layer, to containerd nor here)', async () => {
    await cp(w('lazy'), w('lazyp'), { recursive: true })
    const meta = manifest.layers.find(l => l.mediaType === MEDIA_TYPE_EROFS_META)!
    const blobs = JSON.parse(meta.annotations![ANNOTATION_BLOBS]!) as string[]
    await writeFile(w('trace.json'), JSON.stringify({ version: 1, chunks: [{ blob: blobs[0], blkaddr: 0 }] }))
    const { manifestDigest: md } = await attachPrefetchTrace(`oci:${w('lazyp')}:v1`, w('trace.json'))
    const mp = (await readManifest(parseOciRef(`oci:${w('lazyp')}:v1`))).manifest
    expect(mp.layers.at(-1)!.mediaType).toBe(MEDIA_TYPE_PREFETCH)
    const layers = mp.layers.filter(l => l.mediaType !== MEDIA_TYPE_PREFETCH)
    const chain = chainIds(layers.map(l => l.digest))
    await stop()
    await start([w('lazyp')])
    const refs: string[] = []
    try {
      let parent = ''
      for (const [i, l] of layers.entries()) {
        expect(await codeOf(c.prepare({ key: `k8s.io/9/extract-${i} p-${i}`, parent, labels: CRI(chain[i]!, l.digest, md) }))).toBe(status.ALREADY_EXISTS)
        expect((await c.stat({ key: chain[i]! })).info.labels[LABEL_REMOTE]).toBe(l.digest)
        refs.push(chain[i]!)
        parent = chain[i]!
      }
    } finally {
      for (const r of [...refs].reverse()) await c.remove({ key: r }).catch(() => {})
      await stop()
      await start([w('lazy')])
    }
  })
})
