/**
 * Must hold (issue 4): for each test layer, fsck.erofs accepts the metadata image, the kernel mounts it
 * file-backed with its blob, and the mounted tree equals the layer tar extracted by GNU tar
 * (bytes, modes, owners, times, xattrs, link targets, hardlink identity).
 */
import { createReadStream } from 'node:fs'
import { mkdir, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer, type LayerResult } from '../src/index.js'
import { makeRootfs, tarDir, untar, type TarFormat } from './fixtures.js'
import { cleanup, mountErofs, overlayForm, requireTools, run, snapshot, tempDir, umount, views } from './helpers.js'

interface Case { format: TarFormat, compress: 'gzip' | 'zstd' | 'none', chunkSize: number }

const cases: Case[] = [
  { format: 'pax', compress: 'gzip', chunkSize: 64 * 1024 },
  { format: 'pax', compress: 'zstd', chunkSize: 1 << 20 },
  { format: 'gnu', compress: 'none', chunkSize: 4096 }
]

describe('layer conversion validated by fsck.erofs, the kernel and GNU tar', () => {
  let work: string
  let rootfs: string
  const mounts: string[] = []

  beforeAll(async () => {
    await requireTools('tar', 'gzip', 'zstd', 'fsck.erofs', 'getfattr', 'setfattr', 'busybox', 'mknod', 'chroot')
    work = await tempDir('layer')
    rootfs = join(work, 'rootfs')
    await mkdir(rootfs)
    await makeRootfs(rootfs)
  })

  afterAll(async () => {
    for (const m of mounts.reverse()) await umount(m).catch(() => {})
    if (work !== undefined) await cleanup(work)
  })

  for (const c of cases) {
    it(`${c.format} tar, ${c.compress}, ${c.chunkSize / 1024} KiB chunks`, async () => {
      const dir = join(work, `${c.format}-${c.compress}-${c.chunkSize}`)
      await mkdir(dir)
      const tar = join(dir, 'layer.tar')
      await tarDir(rootfs, tar, c.format)
      let layer = tar
      if (c.compress === 'gzip') { await run('gzip', ['-k', tar]); layer = `${tar}.gz` }
      if (c.compress === 'zstd') { await run('zstd', ['-q', '-k', tar]); layer = `${tar}.zst` }
      const meta = join(dir, 'layer.erofs')
      const blob = join(dir, 'layer.blob')
      const r: LayerResult = await convertLayer(createReadStream(layer), { metaPath: meta, blobPath: blob, chunkSize: c.chunkSize })
      expect(r.compression).toBe(c.compress)
      expect(r.stats.holes).toBeGreaterThan(0) // the sparse file
      expect(r.stats.dedupInLayer).toBeGreaterThan(0) // multi-copy, repeated
      expect(r.devices).toHaveLength(1)
      expect(r.devices[0]!.tag).toBe(r.blobDigest)
      expect((await stat(blob)).size).toBe(r.blobSize)
      // chunks are stored compressed: the blob file is smaller than the view the device table describes
      expect(r.stats.compressedChunks).toBeGreaterThan(0)
      expect(r.blobSize).toBeLessThan(r.stats.storedBytes)
      expect(r.devices[0]!.blocks * 4096).toBe(r.blobViewSize)
      // no temp files left next to the outputs
      expect((await readdir(dir)).filter(n => n.includes('.tmp-'))).toEqual([])

      // our own checker agrees (every structure, every chunk digest, the blob digest)
      expect((await checkImage(meta, { blobs: [blob] })).paths).toBeGreaterThan(700)

      // validator 1: fsck.erofs (erofs-utils), reading every file's data through the blob's materialised view
      const [view] = await views(meta, [blob], join(dir, 'views'))
      expect((await stat(view!)).size).toBe(r.blobViewSize)
      const fsckOut = join(dir, 'fsck')
      await run('fsck.erofs', [`--device=${view!}`, meta])
      await run('fsck.erofs', [`--device=${view!}`, `--extract=${fsckOut}`, meta])

      // validator 2: the kernel, file-backed with the view as device
      const mnt = join(dir, 'mnt')
      await mkdir(mnt)
      await mountErofs(meta, [view!], mnt)
      mounts.push(mnt)
      try {
        // validator 3: GNU tar's extraction of the same layer
        const ref = join(dir, 'ref')
        await mkdir(ref)
        await untar(tar, ref)
        const expected = overlayForm(await snapshot(ref))
        const actual = await snapshot(mnt)
        expect(Object.keys(actual.entries).sort()).toEqual(Object.keys(expected.entries).sort())
        for (const [p, e] of Object.entries(expected.entries)) {
          expect({ path: p, ...actual.entries[p] }).toEqual({ path: p, ...e })
        }
        expect(actual.links).toEqual(expected.links)
        // the rootfs runs: busybox from the mounted image
        const { stdout } = await run('chroot', [mnt, '/bin/busybox', 'echo', 'ran from erofs'])
        expect(stdout.trim()).toBe('ran from erofs')
      } finally {
        await umount(mnt)
        mounts.pop()
      }
    })
  }
})
