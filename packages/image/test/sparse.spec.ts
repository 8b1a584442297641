/**
 * GNU sparse members (`tar -S`, old GNU 'S' headers and pax 1.0) convert to files whose holes are EROFS
 * holes; the kernel mount equals GNU tar's extraction. Sparse maps that lie are refused.
 */
import { createReadStream } from 'node:fs'
import { mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer } from '../src/index.js'
import { untar } from './fixtures.js'
import { cleanup, makeTar, mountErofs, requireTools, run, snapshot, tempDir, umount, views } from './helpers.js'

const SPARSE_TREE = String.raw`
set -eu
R="$1"
mkdir -p "$R"
truncate -s 5M "$R/middle"; printf 'abc' | dd of="$R/middle" bs=1 seek=2000000 conv=notrunc status=none
truncate -s 3M "$R/tail"; printf 'end' | dd of="$R/tail" bs=1 seek=3145725 conv=notrunc status=none
truncate -s 2M "$R/allhole"
head -c 100000 /dev/urandom > "$R/head"; truncate -s 4M "$R/head"
truncate -s 1G "$R/huge"; for o in 1 300000000 700000000; do printf 'x%s' $o | dd of="$R/huge" bs=1 seek=$o conv=notrunc status=none; done
cp --sparse=always "$R/middle" "$R/middle-copy"
truncate -s 8M "$R/many"; for i in $(seq 1 40); do printf 'seg%s' $i | dd of="$R/many" bs=1 seek=$((i * 200000)) conv=notrunc status=none; done
`

describe('GNU sparse members', () => {
  let work: string
  beforeAll(async () => {
    await requireTools('tar', 'fsck.erofs', 'getfattr', 'truncate')
    work = await tempDir('sparse')
    await run('sh', ['-c', SPARSE_TREE, 'sh', join(work, 'tree')])
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  for (const format of ['gnu', 'pax'] as const) {
    it(`tar -S --format=${format} round-trips through the kernel mount`, async () => {
      const dir = join(work, format)
      await mkdir(dir)
      const tar = join(dir, 'layer.tar')
      await run('tar', ['-S', `--format=${format}`, '--numeric-owner', '-C', join(work, 'tree'), '-cf', tar, '.'])
      const meta = join(dir, 'meta.erofs')
      const blob = join(dir, 'data.blob')
      const r = await convertLayer(createReadStream(tar), { metaPath: meta, blobPath: blob, chunkSize: 64 * 1024 })
      expect(r.tarSize).toBeLessThan(2 * 1024 * 1024) // really sparse in the tar
      expect(r.blobSize).toBeLessThan(4 * 1024 * 1024) // and in the blob (one 64 KiB chunk per data segment)
      expect(r.stats.holes).toBeGreaterThan(16000)
      const devs = await views(meta, [blob], join(dir, 'views'))
      await run('fsck.erofs', [`--device=${devs[0]!}`, meta])
      await checkImage(meta, { blobs: [blob] })
      const ref = join(dir, 'ref')
      const mnt = join(dir, 'mnt')
      await mkdir(ref)
      await mkdir(mnt)
      await untar(tar, ref)
      await mountErofs(meta, devs, mnt)
      try {
        const a = await snapshot(mnt)
        const e = await snapshot(ref)
        expect(a).toEqual(e)
        expect(a.entries.huge!.size).toBe(1024 ** 3)
      } finally {
        await umount(mnt)
      }
    })
  }

  it('refuses sparse maps that lie, and sparse sizes past the cap, leaving nothing', async () => {
    const cases: Array<[Buffer, string, number?]> = [
      // map lists more data than the member stores
      [makeTar([{ name: 'x', data: Buffer.from('abc'), pax: { 'GNU.sparse.map': '0,10', 'GNU.sparse.size': '100' } }]), 'InvalidTarError'],
      // map past the file size
      [makeTar([{ name: 'x', data: Buffer.from('abc'), pax: { 'GNU.sparse.map': '99,3', 'GNU.sparse.size': '100' } }]), 'InvalidTarError'],
      // overlapping segments
      [makeTar([{ name: 'x', data: Buffer.from('abcd'), pax: { 'GNU.sparse.map': '10,2,11,2', 'GNU.sparse.size': '100' } }]), 'InvalidTarError'],
      // a 1 PB sparse file in a tiny tar
      [makeTar([{ name: 'x', data: Buffer.from('abc'), pax: { 'GNU.sparse.map': '0,3', 'GNU.sparse.size': String(2 ** 50) } }]), 'LayerTooLargeError', 1 << 30]
    ]
    for (const [i, [tar, name, maxSize]] of cases.entries()) {
      const dir = join(work, `bad-${i}`)
      await mkdir(dir)
      const err = await convertLayer(Readable.from([tar]), { metaPath: join(dir, 'm'), blobPath: join(dir, 'b'), ...(maxSize !== undefined ? { maxSize } : {}) }).then(() => undefined, (e: Error) => e)
      expect(err?.name).toBe(name)
      expect(await readdir(dir)).toEqual([])
    }
  })
})
