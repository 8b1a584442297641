/**
 * The chunk table contract (chunks.ts) that the lazy mount reads: readChunkTable / decodeChunk / blobViewSizes on
 * v2 images (compressed chunks), on v1 images (uncompressed blobs, still read), and materializeBlob's view, which
 * fsck.erofs and the kernel accept and which holds exactly the bytes decodeChunk returns.
 */
import { createHash } from 'node:crypto'
import { open, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  blobViewSizes, checkImage, convertLayer, decodeChunk, ErofsReader, extentAt, fileChunks, hotChunks, loadChunkTable, materializeBlob, materializeLayers, readChunkTable,
  CHUNK_TABLE_ENTRY_V1, CHUNK_TABLE_HEADER, CHUNK_TABLE_MAGIC, type ChunkExtent, type LayerResult
} from '../src/index.js'
import { cleanup, makeTar, mountErofs, requireTools, run, snapshot, tempDir, umount, type TarMember } from './helpers.js'

const text = (seed: number, lines: number): Buffer => Buffer.from(Array.from({ length: lines }, (_, i) => `${seed} line ${i} ${'x'.repeat(i % 50)}\n`).join(''))
const noise = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n)
  let h = createHash('sha256').update(String(seed)).digest()
  for (let i = 0; i < n; i += 32) { h.copy(b, i); h = createHash('sha256').update(h).digest() }
  return b
}

/** A v1 image as the earlier converter wrote it: the blob is the view, the table has 48-byte entries, tags hash the view. */
async function asV1 (meta: string, view: string, out: string): Promise<void> {
  const img = await readFile(meta)
  const reader = new ErofsReader(img)
  const t = await readChunkTable(meta)
  const tableAt = reader.sb.blocks * 4096
  const v1 = Buffer.alloc(CHUNK_TABLE_HEADER + CHUNK_TABLE_ENTRY_V1 * t.entries.length)
  v1.write(CHUNK_TABLE_MAGIC, 0, 'latin1')
  v1.writeUInt32LE(1, 8)
  v1.writeUInt32LE(t.entries.length, 12)
  v1.writeUInt32LE(t.chunkSize, 16)
  t.entries.forEach((e, i) => {
    const p = CHUNK_TABLE_HEADER + i * CHUNK_TABLE_ENTRY_V1
    v1.writeUInt16LE(e.device, p)
    v1.writeUInt32LE(e.blkaddr, p + 4)
    v1.writeUInt32LE(e.length, p + 8)
    e.digest.copy(v1, p + 16)
  })
  const head = Buffer.from(img.subarray(0, tableAt))
  head.write(createHash('sha256').update(await readFile(view)).digest('hex'), 1152, 'latin1') // device slot 1 tag
  await writeFile(out, Buffer.concat([head, v1]))
}

describe('chunk table contract', () => {
  let work: string
  let r: LayerResult
  const w = (p: string): string => join(work, p)
  const members: TarMember[] = [
    { name: 'text', data: text(1, 20_000) }, // several chunks, compressible
    { name: 'noise', data: noise(70_000, 2) }, // incompressible: stored as is
    { name: 'again', data: text(1, 20_000) }, // deduplicated
    { name: 'tail', data: Buffer.concat([Buffer.alloc(65_536), text(3, 10)]) } // a hole, then a short last chunk
  ]

  beforeAll(async () => {
    await requireTools('fsck.erofs', 'getfattr')
    work = await tempDir('chunks')
    await writeFile(w('layer.tar'), makeTar(members))
    r = await convertLayer(Readable.from([await readFile(w('layer.tar'))]), { metaPath: w('v2.erofs'), blobPath: w('v2.blob'), chunkSize: 64 * 1024 })
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  it('v3: every entry decodes from its stored extent to the bytes of the view at its block address', async () => {
    const t = await readChunkTable(w('v2.erofs'))
    expect(t).toMatchObject({ version: 3, chunkSize: 64 * 1024, storedSizes: [r.blobSize] })
    expect(new Set(t.entries.map(e => e.compression))).toEqual(new Set(['zstd', 'none']))
    expect(t.entries.filter(e => e.compression === 'none').every(e => e.storedLength === e.length)).toBe(true)
    expect(t.entries.filter(e => e.compression === 'zstd').every(e => e.storedLength <= e.length * 7 / 8)).toBe(true)
    const sorted = [...t.entries].sort((a, b) => a.device - b.device || a.blkaddr - b.blkaddr)
    expect(t.entries).toEqual(sorted)
    expect(await blobViewSizes(w('v2.erofs'))).toEqual([r.blobViewSize])
    expect((await stat(w('v2.blob'))).size).toBe(r.blobSize)
    expect(t.entries.reduce((s, e) => s + e.storedLength, 0)).toBe(r.blobSize) // packed, nothing else in the blob
    // the short chunks (text, noise's tail, tail's tail) share one pack: one entry holding several files' chunks
    expect(r.stats).toMatchObject({ packs: 1, packedChunks: 3 })
    expect(t.entries.filter(e => e.length < 64 * 1024)).toHaveLength(1)

    const m = await materializeBlob(w('v2.erofs'), 1, w('v2.blob'), w('v2.view'))
    expect(m).toMatchObject({ viewSize: r.blobViewSize, chunks: t.entries.length })
    const blob = await readFile(w('v2.blob'))
    const view = await readFile(w('v2.view'))
    expect(view.length).toBe(r.blobViewSize)
    for (const e of t.entries) {
      const got = decodeChunk(e, blob.subarray(e.storedOffset, e.storedOffset + e.storedLength))
      expect(got.equals(view.subarray(e.blkaddr * 4096, e.blkaddr * 4096 + e.length))).toBe(true)
      expect(createHash('sha256').update(got).digest().equals(e.digest)).toBe(true)
    }
    // the files' bytes are in the view where the EROFS chunk indexes say (read back through the kernel)
    await run('fsck.erofs', [`--device=${w('v2.view')}`, w('v2.erofs')])
    await mkdir(w('mnt'))
    await mountErofs(w('v2.erofs'), [w('v2.view')], w('mnt'))
    try {
      for (const mb of members) expect((await readFile(w(`mnt/${mb.name}`))).equals(mb.data!)).toBe(true)
    } finally {
      await umount(w('mnt'))
    }
  })

  it('v1 images are still read: stored extents are the view, the blob mounts as it is', async () => {
    await asV1(w('v2.erofs'), w('v2.view'), w('v1.erofs'))
    const t1 = await readChunkTable(w('v1.erofs'))
    const t2 = await readChunkTable(w('v2.erofs'))
    expect(t1.version).toBe(1)
    expect(t1.storedSizes).toEqual([r.blobViewSize])
    expect(t1.entries).toEqual(t2.entries.map((e): ChunkExtent => ({ ...e, compression: 'none', storedOffset: e.blkaddr * 4096, storedLength: e.length })))
    const report = await checkImage(w('v1.erofs'), { blobs: [w('v2.view')] }) // every chunk and the blob digest
    expect(report.chunksChecked).toBe(t1.entries.length)
    // no expansion for v1: the blob itself is the device
    expect(await materializeLayers([{ meta: w('v1.erofs'), blobs: [w('v2.view')] }], w('views-v1'))).toEqual([[w('v2.view')]])
    await run('fsck.erofs', [`--device=${w('v2.view')}`, w('v1.erofs')])
    await mkdir(w('mnt1'))
    await mountErofs(w('v1.erofs'), [w('v2.view')], w('mnt1'))
    try {
      const s = await snapshot(w('mnt1'))
      expect(s.entries.text!.sha256).toBe(createHash('sha256').update(members[0]!.data!).digest('hex'))
    } finally {
      await umount(w('mnt1'))
    }
    // decodeChunk of a v1 extent reads the view's bytes in place
    const fh = await open(w('v2.view'))
    try {
      const e = t1.entries[0]!
      const b = Buffer.alloc(e.storedLength)
      await fh.read(b, 0, b.length, e.storedOffset)
      expect(decodeChunk(e, b).equals(b)).toBe(true)
    } finally { await fh.close() }
  })

  it("compression 'none' stores every chunk as is, packed, in a v2 table", async () => {
    const n = await convertLayer(Readable.from([await readFile(w('layer.tar'))]), { metaPath: w('none.erofs'), blobPath: w('none.blob'), chunkSize: 64 * 1024, compression: 'none' })
    const t = await readChunkTable(w('none.erofs'))
    expect(t.entries.every(e => e.compression === 'none')).toBe(true)
    expect(n.blobSize).toBe(n.stats.storedBytes)
    expect(n.blobSize).toBeGreaterThan(r.blobSize)
    expect(n.blobViewSize).toBe(r.blobViewSize) // same view, same metadata layout
    await checkImage(w('none.erofs'), { blobs: [w('none.blob')] })
  })

  it('hot chunks (a prefetch list\'s files) are packed apart from the others; the image reads back the same', async () => {
    const small = Array.from({ length: 8 }, (_, i): TarMember => ({ name: `etc/f${i}`, data: text(10 + i, 40 + i) }))
    const tar = makeTar([{ name: 'etc/', type: '5' }, ...small, ...members])
    const hot = hotChunks([{ path: 'etc/f1', chunk: 0 }, { path: 'etc/f6', chunk: 0 }, { path: 'tail', chunk: 1 }, { path: 'text', chunk: 0 }])
    /** The files whose chunks share the entry that holds etc/f1's chunk. */
    const neighbours = async (meta: string): Promise<string[]> => {
      const { reader, table } = await loadChunkTable(meta)
      const all = fileChunks(reader)
      const f1 = all.find(c => c.path === 'etc/f1')!
      const entry = extentAt(table.entries, f1.blkaddr)!
      return all.filter(c => extentAt(table.entries, c.blkaddr) === entry).map(c => `${c.path}#${c.chunk}`).sort()
    }
    await convertLayer(Readable.from([tar]), { metaPath: w('cold.erofs'), blobPath: w('cold.blob'), chunkSize: 64 * 1024 })
    expect(await neighbours(w('cold.erofs'))).toContain('etc/f0#0') // in tar order, f1 is packed beside f0
    const h = await convertLayer(Readable.from([tar]), { metaPath: w('hot.erofs'), blobPath: w('hot.blob'), chunkSize: 64 * 1024, hotChunks: hot })
    // text#0 is a whole chunk (stored alone whatever the list says); the short ones listed share one pack
    expect(await neighbours(w('hot.erofs'))).toEqual(['etc/f1#0', 'etc/f6#0', 'tail#1'])
    expect(h.stats.packs).toBe(2)
    await checkImage(w('hot.erofs'), { blobs: [w('hot.blob')] })
    await materializeBlob(w('hot.erofs'), 1, w('hot.blob'), w('hot.view'))
    await run('fsck.erofs', [`--device=${w('hot.view')}`, w('hot.erofs')])
    await mkdir(w('mnt-hot'))
    await mountErofs(w('hot.erofs'), [w('hot.view')], w('mnt-hot'))
    try {
      for (const mb of [...small, ...members]) expect((await readFile(w(`mnt-hot/${mb.name}`))).equals(mb.data!), mb.name).toBe(true)
    } finally {
      await umount(w('mnt-hot'))
    }
  })
})
