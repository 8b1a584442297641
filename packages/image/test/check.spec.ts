/**
 * checkImage() verifies every structure and chunk digest and names the first fault; inspectImage() reports
 * what is inside, including dedup figures.
 */
import { readFile, writeFile, truncate, copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer, createChunkDict, ErofsReader, inspectImage, readChunkTable, type LayerResult } from '../src/index.js'
import { cleanup, makeTar, tempDir } from './helpers.js'

const rnd = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n)
  let x = seed
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24 }
  return b
}

describe('checkImage / inspectImage', () => {
  let work: string
  let r1: LayerResult
  let r2: LayerResult
  const p = (n: string): string => join(work, n)

  beforeAll(async () => {
    work = await tempDir('check')
    const dict = createChunkDict()
    const a = rnd(50_000, 1)
    r1 = await convertLayer(Readable.from([makeTar([
      { name: 'a', data: a }, { name: 'a2', data: a }, { name: 'z', data: Buffer.alloc(20_000) }, { name: 'h', type: '1', linkname: 'a' }
    ])]), { metaPath: p('1.erofs'), blobPath: p('1.blob'), chunkSize: 8192, chunkDict: dict })
    r2 = await convertLayer(Readable.from([makeTar([
      { name: 'again', data: a }, { name: 'new', data: rnd(30_000, 2) }
    ])]), { metaPath: p('2.erofs'), blobPath: p('2.blob'), chunkSize: 8192, chunkDict: dict })
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  it('accepts what the converter wrote, with every chunk verified', async () => {
    const c1 = await checkImage(p('1.erofs'), { blobs: [p('1.blob')] })
    expect(c1).toMatchObject({ inodes: 4, paths: 5, devices: 1, chunksChecked: Math.ceil(50_000 / 8192) })
    const c2 = await checkImage(p('2.erofs'), { blobs: [p('1.blob'), p('2.blob')] })
    expect(c2.devices).toBe(2)
    expect(c2.bytesChecked).toBe(50_000 + 30_000)
  })

  it('inspects trees and dedup figures', async () => {
    const i1 = await inspectImage(p('1.erofs'), { files: true })
    expect(i1.inodes).toMatchObject({ file: 3, dir: 1 })
    expect(i1.fileBytes).toBe(50_000 * 2 + 20_000)
    expect(i1.chunks).toMatchObject({ holes: 3, distinct: 7, referenced: 14, bytesPerDevice: [50_000] })
    const t1 = await readChunkTable(p('1.erofs'))
    expect(i1.chunks.storedBytesPerDevice).toEqual([t1.entries.reduce((s, e) => s + e.storedLength, 0)])
    expect(i1.chunks.compressed).toBe(t1.entries.filter(e => e.compression === 'zstd').length)
    expect(i1.chunks.storedBytesPerDevice[0]).toBe(r1.blobSize) // the blob holds exactly the stored extents
    expect(i1.tableVersion).toBe(3)
    expect(i1.files?.find(f => f.path === 'h')).toMatchObject({ kind: 'file', size: 50_000, chunks: 7 })
    expect(r1.stats).toMatchObject({ unique: 7, dedupInLayer: 7, holes: 3 })
    expect(r2.stats).toMatchObject({ dedupFromDict: 7, unique: 4 })
    const i2 = await inspectImage(p('2.erofs'))
    expect(i2.super.devices.map(d => d.tag)).toEqual([r1.blobDigest, r2.blobDigest])
    expect(i2.chunks.bytesPerDevice).toEqual([50_000, 30_000])
  })

  async function corrupted (name: string, mutate: (b: Buffer) => void): Promise<string> {
    const b = await readFile(p('1.erofs'))
    mutate(b)
    await writeFile(p(name), b)
    return p(name)
  }

  it('names metadata faults', async () => {
    await expect(checkImage(await corrupted('magic.erofs', b => { b[1024] = 0 }))).rejects.toMatchObject({ name: 'CorruptImageError', message: expect.stringContaining('superblock') })
    const reader = new ErofsReader(await readFile(p('1.erofs')))
    const tableAt = reader.sb.blocks * 4096
    await expect(checkImage(await corrupted('notable.erofs', b => { b.write('XXXX', tableAt) }))).rejects.toMatchObject({ name: 'CorruptImageError', message: expect.stringContaining('chunk table') })
    const root = reader.inode(reader.sb.rootNid)
    const rootData = reader.sb.rootNid * 32 + (root.extended ? 64 : 32)
    await expect(checkImage(await corrupted('dirent.erofs', b => { b.writeUInt16LE(5, rootData + 8) }))).rejects.toMatchObject({ name: 'CorruptImageError', message: expect.stringContaining(`directory nid ${reader.sb.rootNid}`) })
    await expect(checkImage(await corrupted('devices.erofs', b => { b.writeUInt16LE(0, 1024 + 86) }))).rejects.toMatchObject({ name: 'CorruptImageError' })
  })

  it('names chunk and blob faults', async () => {
    const reader = new ErofsReader(await readFile(p('1.erofs')))
    const tableAt = reader.sb.blocks * 4096
    // a digest in the chunk table that the blob does not match (v2: header, one stored size, entries of 56 bytes)
    const bad = await corrupted('digest.erofs', b => { b[tableAt + 40 + 24] = b[tableAt + 40 + 24]! ^ 1 })
    await expect(checkImage(bad, { blobs: [p('1.blob')] })).rejects.toMatchObject({ name: 'ChunkDigestMismatchError', code: 'ERR_CHUNK_DIGEST', message: expect.stringContaining('device 1 block 0') })
    // a flipped byte in the blob, inside the third stored extent
    const e = (await readChunkTable(p('1.erofs'))).entries[2]!
    await copyFile(p('1.blob'), p('flip.blob'))
    const blob = await readFile(p('flip.blob'))
    blob[e.storedOffset + 10] = blob[e.storedOffset + 10]! ^ 0xff
    await writeFile(p('flip.blob'), blob)
    await expect(checkImage(p('1.erofs'), { blobs: [p('flip.blob')] })).rejects.toMatchObject({ name: 'ChunkDigestMismatchError', message: expect.stringContaining(`block ${e.blkaddr}`) })
    // a truncated blob
    await copyFile(p('1.blob'), p('short.blob'))
    await truncate(p('short.blob'), 4096)
    await expect(checkImage(p('1.erofs'), { blobs: [p('short.blob')] })).rejects.toMatchObject({ name: 'CorruptImageError', message: expect.stringContaining('the chunk table says') })
    // the wrong number of blobs
    await expect(checkImage(p('2.erofs'), { blobs: [p('2.blob')] })).rejects.toMatchObject({ name: 'CorruptImageError' })
  })
})
