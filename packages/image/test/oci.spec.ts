/**
 * OCI image conversion: a 3-layer image built by umoci (a busybox rootfs, then changes with whiteouts)
 * converts to an OCI layout whose metadata layers mount file-backed with their blobs, stack with overlayfs
 * into exactly what `umoci unpack` flattens, and which skopeo reads and copies. A second image converted
 * with the first as chunk dictionary stores none of the shared chunks again.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { gzipSync } from 'node:zlib'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  checkImage, convertImage, convertedLayers, InvalidImageRefError, LayerDigestMismatchError, MEDIA_TYPE_CHUNK_BLOB, MEDIA_TYPE_EROFS_META,
  ANNOTATION_BLOBS, readManifest, parseOciRef, checkImageRef, inspectImageRef, mountImage, materializeLayers, type Mounter
} from '../src/index.js'
import { makeRootfs } from './fixtures.js'
import { cleanup, makeTar, mountErofs, nativeMount, requireTools, run, snapshot, tempDir, umount } from './helpers.js'

describe('OCI image conversion (oci:DIR:TAG)', () => {
  let work: string
  const mounts: string[] = []
  const w = (p: string): string => join(work, p)

  beforeAll(async () => {
    await requireTools('umoci', 'skopeo', 'fsck.erofs', 'getfattr', 'tar')
    work = await tempDir('oci')
    // layer 1: busybox rootfs; layer 2: edits and deletions; layer 3: a directory replaced wholesale
    await run('umoci', ['init', '--layout', w('src')])
    await run('umoci', ['new', '--image', `${w('src')}:v1`])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b1')])
    await makeRootfs(w('b1/rootfs'), { whiteouts: false })
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b1')])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b2')])
    await run('sh', ['-c', `set -e; R=${w('b2/rootfs')}; rm -rf "$R/deep" "$R/data/multi-copy"; printf 'changed\\n' > "$R/etc/hostname"; cp "$R/data/multi" "$R/usr/lib/multi-again"; chown 7:8 "$R/etc/passwd"`])
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b2')])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b3')])
    await run('sh', ['-c', `set -e; R=${w('b3/rootfs')}; rm -rf "$R/bigdir"; mkdir "$R/bigdir"; printf 'fresh\\n' > "$R/bigdir/only"; ln -sf /etc/passwd "$R/data/multi-copy"`])
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b3')])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('flat')])
  })
  afterAll(async () => {
    for (const m of mounts.reverse()) await umount(m).catch(() => {})
    if (work !== undefined) await cleanup(work)
  })

  it('converts, mounts, stacks to what umoci flattens, and skopeo reads it', async () => {
    const res = await convertImage(`oci:${w('src')}:v1`, `oci:${w('dst')}:v1`, { chunkSize: 256 * 1024 })
    expect(res.layers).toHaveLength(3)
    expect(res.layers[1]!.stats.dedupFromDict).toBeGreaterThan(0) // usr/lib/multi-again
    const { manifest } = await readManifest(parseOciRef(`oci:${w('dst')}:v1`))
    expect(manifest.layers.filter(l => l.mediaType === MEDIA_TYPE_EROFS_META)).toHaveLength(3)
    expect(manifest.layers.filter(l => l.mediaType === MEDIA_TYPE_CHUNK_BLOB).length).toBeGreaterThanOrEqual(2)
    const config = JSON.parse(await readFile(join(w('dst'), 'blobs/sha256', manifest.config.digest.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } }
    expect(config.rootfs.diff_ids).toEqual(manifest.layers.map(l => l.digest)) // one per layer, as containerd requires

    const layers = await convertedLayers(`oci:${w('dst')}:v1`)
    const mnts: string[] = []
    const devs = await materializeLayers(layers, w('views'))
    for (const [i, l] of layers.entries()) {
      await run('fsck.erofs', [...devs[i]!.map(b => `--device=${b}`), l.meta])
      await checkImage(l.meta, { blobs: l.blobs })
      const mnt = w(`m${i}`)
      await mkdir(mnt)
      await mountErofs(l.meta, devs[i]!, mnt)
      mounts.push(mnt)
      mnts.push(mnt)
    }
    const merged = w('merged')
    await mkdir(merged)
    const m = await nativeMount()
    await m.mount('overlay', merged, 'overlay', m.constants.MS_RDONLY, `lowerdir=${[...mnts].reverse().join(':')}`)
    mounts.push(merged)
    const a = await snapshot(merged)
    const e = await snapshot(w('flat/rootfs'))
    expect(Object.keys(a.entries).sort()).toEqual(Object.keys(e.entries).sort())
    for (const [p, x] of Object.entries(e.entries)) expect({ path: p, ...a.entries[p] }).toEqual({ path: p, ...x })

    // a tool nobody here wrote reads and copies the converted layout
    const { stdout } = await run('skopeo', ['inspect', '--raw', `oci:${w('dst')}:v1`])
    expect(JSON.parse(stdout)).toEqual(manifest)
    await run('skopeo', ['copy', `oci:${w('dst')}:v1`, `oci:${w('copy')}:v1`])
    expect((await readManifest(parseOciRef(`oci:${w('copy')}:v1`))).manifest.layers.map(l => l.digest)).toEqual(manifest.layers.map(l => l.digest))
  })

  it('checks and inspects by reference; conversion is reproducible', async () => {
    const checked = await checkImageRef(`oci:${w('dst')}:v1`)
    expect(checked).toHaveLength(3)
    expect(checked.every(c => c.chunksChecked >= 0 && c.paths > 0)).toBe(true)
    const info = await inspectImageRef(`oci:${w('dst')}:v1`)
    expect(info.layers).toHaveLength(3)
    expect(info.chunkSize).toBe(256 * 1024)
    expect(info.layers[0]!.inspection.inodes.file).toBeGreaterThan(400)
    expect(info.fileBytes).toBeGreaterThan(info.blobBytes) // copies and repeats stored once, holes not at all
    const again = await convertImage(`oci:${w('src')}:v1`, `oci:${w('dst-again')}:v1`, { chunkSize: 256 * 1024 })
    const first = await readManifest(parseOciRef(`oci:${w('dst')}:v1`))
    expect(again.manifestDigest).toBe(first.descriptor.digest)
    // a flipped byte in a data blob is found and named
    const blobLayer = first.manifest.layers.find(l => l.mediaType === MEDIA_TYPE_CHUNK_BLOB)!
    const p = join(w('dst-again'), 'blobs/sha256', blobLayer.digest.slice(7))
    const b = await readFile(p)
    b[100] = b[100]! ^ 1
    await writeFile(p, b)
    await expect(checkImageRef(`oci:${w('dst-again')}:v1`)).rejects.toMatchObject({ name: 'ChunkDigestMismatchError' })
  })

  it('mounts a converted image by reference (mountImage) and unmounts everything', async () => {
    const target = w('mounted')
    await mkdir(target)
    const m = await nativeMount()
    const img = await mountImage(`oci:${w('dst')}:v1`, target, { mounter: m as unknown as Mounter, workDir: w('mount-work') })
    try {
      expect(img.layers).toHaveLength(3)
      const a = await snapshot(target)
      const e = await snapshot(w('flat/rootfs'))
      expect(a).toEqual({ ...e, links: a.links })
    } finally {
      await img.unmount()
    }
    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8')
    expect(mountinfo).not.toContain(w('mount-work'))
    expect(mountinfo).not.toContain(` ${target} `)
  })

  it('references chunks of --chunk-dict images instead of storing them again', async () => {
    const res = await convertImage(`oci:${w('src')}:v1`, `oci:${w('dst2')}:v1`, { chunkSize: 256 * 1024, chunkDict: [`oci:${w('dst')}:v1`] })
    for (const l of res.layers) {
      expect(l.blobDigest).toBeUndefined() // every chunk already in the dictionary image
      expect(l.stats.unique).toBe(0)
    }
    const layers = await convertedLayers(`oci:${w('dst2')}:v1`)
    for (const l of layers) {
      expect(JSON.parse(l.descriptor.annotations![ANNOTATION_BLOBS]!).length).toBeGreaterThan(0)
      await checkImage(l.meta, { blobs: l.blobs })
    }
  })

  it('refuses a layer whose bytes do not match its digest, and bad references', async () => {
    const { manifest } = await readManifest(parseOciRef(`oci:${w('src')}:v1`))
    const victim = join(w('src'), 'blobs/sha256', manifest.layers[2]!.digest.slice(7))
    const orig = await readFile(victim)
    await writeFile(victim, gzipSync(makeTar([{ name: 'other', data: Buffer.from('other bytes') }]))) // a valid layer, not the one named
    try {
      await expect(convertImage(`oci:${w('src')}:v1`, `oci:${w('dst3')}:v1`)).rejects.toMatchObject({ name: 'LayerDigestMismatchError', code: 'ERR_LAYER_DIGEST' })
    } finally {
      await writeFile(victim, orig)
    }
    await expect(convertImage('docker://x/y:z', `oci:${w('dst4')}`)).rejects.toBeInstanceOf(InvalidImageRefError)
    await expect(convertImage(`oci:${w('src')}:nope`, `oci:${w('dst4')}`)).rejects.toBeInstanceOf(InvalidImageRefError)
    expect(LayerDigestMismatchError.name).toBe('LayerDigestMismatchError')
  })
})
