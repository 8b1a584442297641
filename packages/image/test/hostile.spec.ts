/**
 * Hostile layers get a clear error (named, with a code) and leave no output behind.
 * Symlinks are stored, never followed; duplicate members resolve as GNU tar does (the last one wins).
 */
import { createReadStream } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { randomBytes } from 'node:crypto'
import { gzipSync, createGzip, zstdCompressSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer, decodeChunk, decodeChunkAsync, ErofsReader, materializeBlob, readChunkTable, type ConvertLayerOptions } from '../src/index.js'
import { cleanup, makeTar, mountErofs, requireTools, run, snapshot, tempDir, umount, views, type TarMember } from './helpers.js'

let work: string
let n = 0

async function outDir (): Promise<string> {
  const d = join(work, `case-${n++}`)
  await mkdir(d)
  return d
}

async function convertBytes (bytes: Buffer | AsyncIterable<Uint8Array>, dir: string, extra: Partial<ConvertLayerOptions> = {}): Promise<Awaited<ReturnType<typeof convertLayer>>> {
  const src = Buffer.isBuffer(bytes) ? Readable.from([bytes]) : bytes
  return await convertLayer(src, { metaPath: join(dir, 'meta.erofs'), blobPath: join(dir, 'data.blob'), chunkSize: 4096, ...extra })
}

async function expectRejected (bytes: Buffer | AsyncIterable<Uint8Array>, name: string, code: string, extra: Partial<ConvertLayerOptions> = {}): Promise<void> {
  const dir = await outDir()
  const err = await convertBytes(bytes, dir, extra).then(() => undefined, (e: unknown) => e as Error & { code: string })
  expect(err, `expected ${name}`).toBeDefined()
  expect({ name: err!.name, code: err!.code }).toEqual({ name, code })
  expect(err!.message.length).toBeGreaterThan(10)
  expect(await readdir(dir)).toEqual([]) // nothing left behind, not even temp files
}

const file = (name: string, data: string, extra: Partial<TarMember> = {}): TarMember => ({ name, data: Buffer.from(data), ...extra })

describe('hostile layers', () => {
  beforeAll(async () => {
    await requireTools('gzip', 'fsck.erofs')
    work = await tempDir('hostile')
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  it('rejects names that climb out of the root', async () => {
    await expectRejected(makeTar([file('../evil', 'x')]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
    await expectRejected(makeTar([file('a/../../evil', 'x')]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
    await expectRejected(makeTar([file('/../../etc/passwd', 'x')]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
    await expectRejected(makeTar([file('ok', 'x', { pax: { path: 'x/../../../etc/shadow' } })]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
    await expectRejected(makeTar([file('a', 'x'), { name: 'b', type: '1', linkname: '../../a' }]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
  })

  it('reads an empty stream as an empty layer (as GNU tar lists it)', async () => {
    const dir = await outDir()
    const r = await convertBytes(Buffer.alloc(0), dir)
    expect(r).toMatchObject({ entries: 0, inodes: 1, blobDigest: undefined, devices: [] })
    await run('fsck.erofs', [join(dir, 'meta.erofs')])
  })

  it('stores absolute names relative to the root (as GNU tar does)', async () => {
    const dir = await outDir()
    const r = await convertBytes(makeTar([file('/etc/motd', 'hi')]), dir)
    expect(r.files).toBe(1)
  })

  it('never follows symlinks: a member through a symlink is refused', async () => {
    await expectRejected(makeTar([{ name: 'etc', type: '2', linkname: '/etc' }, file('etc/passwd', 'pwned')]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
    await expectRejected(makeTar([{ name: 'up', type: '2', linkname: '../..' }, file('up/x', 'pwned')]), 'UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
  })

  it('rejects hardlinks to members that do not exist or are directories', async () => {
    await expectRejected(makeTar([{ name: 'h', type: '1', linkname: 'nowhere' }]), 'HardlinkTargetError', 'ERR_TAR_HARDLINK_TARGET')
    await expectRejected(makeTar([{ name: 'd/', type: '5', mode: 0o755 }, { name: 'h', type: '1', linkname: 'd' }]), 'HardlinkTargetError', 'ERR_TAR_HARDLINK_TARGET')
  })

  it('rejects truncated and corrupt gzip', async () => {
    const gz = gzipSync(makeTar([file('a', 'x'.repeat(100000)), file('b', 'y'.repeat(1000))]))
    await expectRejected(gz.subarray(0, gz.length - 20), 'CorruptLayerError', 'ERR_LAYER_CORRUPT')
    await expectRejected(gz.subarray(0, 40), 'CorruptLayerError', 'ERR_LAYER_CORRUPT')
    const bad = Buffer.from(gz)
    for (let i = 30; i < 60; i++) bad[i] = bad[i]! ^ 0x5a
    await expectRejected(bad, 'CorruptLayerError', 'ERR_LAYER_CORRUPT')
    const crc = Buffer.from(gz)
    crc[crc.length - 6] = crc[crc.length - 6]! ^ 1 // CRC32 in the trailer
    await expectRejected(crc, 'CorruptLayerError', 'ERR_LAYER_CORRUPT')
  })

  it('rejects headers that lie about sizes', async () => {
    // claims more data than the stream holds
    await expectRejected(makeTar([file('a', 'short', { size: 100000 })], { end: false }), 'TruncatedTarError', 'ERR_TAR_TRUNCATED')
    // claims less: the rest of the data is read as a header, whose checksum fails
    const lie = makeTar([file('a', 'z'.repeat(2048), { size: 10 })])
    await expectRejected(lie, 'InvalidTarError', 'ERR_TAR_INVALID')
    // a pax size that disagrees with the stream
    await expectRejected(makeTar([file('a', 'abc', { pax: { size: '999999' } })], { end: false }), 'TruncatedTarError', 'ERR_TAR_TRUNCATED')
    // not a number
    const h = makeTar([file('a', 'abc')])
    h.write('12345678x01\0', 124, 'latin1')
    await expectRejected(h, 'InvalidTarError', 'ERR_TAR_INVALID')
    // a stream cut inside a header
    await expectRejected(makeTar([file('a', 'abc'), file('b', 'def')]).subarray(0, 1024 + 100), 'TruncatedTarError', 'ERR_TAR_TRUNCATED')
    await expectRejected(makeTar([file('a', 'abc')]).subarray(0, 700), 'TruncatedTarError', 'ERR_TAR_TRUNCATED')
  })

  it('stops a gzip bomb at the expansion cap', async () => {
    // 64 MiB of zeros in one member compresses to ~64 KiB
    const zeros = async function * (): AsyncGenerator<Buffer> {
      const size = 64 * 1024 * 1024
      yield (await import('./helpers.js')).tarHeader({ name: 'bomb', size })
      const z = Buffer.alloc(1 << 20)
      for (let i = 0; i < 64; i++) yield z
      yield Buffer.alloc(1024)
    }
    const gz = Readable.from(zeros()).pipe(createGzip({ level: 9 }))
    const chunks: Buffer[] = []
    for await (const c of gz) chunks.push(c as Buffer)
    const bomb = Buffer.concat(chunks)
    expect(bomb.length).toBeLessThan(1024 * 1024)
    await expectRejected(bomb, 'LayerTooLargeError', 'ERR_LAYER_TOO_LARGE', { maxSize: 8 * 1024 * 1024 })
    await expectRejected(makeTar(Array.from({ length: 20 }, (_, i) => file(`f${i}`, 'x'))), 'LayerTooLargeError', 'ERR_LAYER_TOO_LARGE', { maxEntries: 10 })
  })

  it('rejects unsupported members and xattr namespaces clearly', async () => {
    await expectRejected(makeTar([file('s', 'x', { pax: { 'GNU.sparse.numblocks': '1', 'GNU.sparse.offset': '0', 'GNU.sparse.numbytes': '1', 'GNU.sparse.size': '10' } })]), 'UnsupportedTarError', 'ERR_TAR_UNSUPPORTED')
    await expectRejected(makeTar([file('a', 'x', { pax: { 'SCHILY.xattr.system.nfs4_acl': 'x' } })]), 'UnsupportedTarError', 'ERR_TAR_UNSUPPORTED')
  })

  it('refuses members hidden after a lone zero block', async () => {
    const hidden = Buffer.concat([makeTar([file('a', 'x')], { end: false }), Buffer.alloc(512), makeTar([file('hidden', 'y')])])
    await expectRejected(hidden, 'InvalidTarError', 'ERR_TAR_INVALID')
  })

  it('stops on abort and leaves nothing', async () => {
    const dir = await outDir()
    const ac = new AbortController()
    const slow = async function * (): AsyncGenerator<Buffer> {
      yield makeTar([file('a', 'x'.repeat(10000))], { end: false })
      ac.abort()
      yield makeTar([file('b', 'y')])
    }
    const err = await convertLayer(slow(), { metaPath: join(dir, 'm'), blobPath: join(dir, 'b'), signal: ac.signal }).then(() => undefined, (e: Error) => e)
    expect(err?.name).toBe('AbortError')
    expect(await readdir(dir)).toEqual([])
  })

  it('rejects garbage that is not a tar', async () => {
    await expectRejected(Buffer.from('this is not a tar archive'.repeat(40)), 'InvalidTarError', 'ERR_TAR_INVALID')
    await expectRejected(Buffer.from('ab'), 'TruncatedTarError', 'ERR_TAR_TRUNCATED')
    await expectRejected(Buffer.from([0x1f, 0x8b]), 'CorruptLayerError', 'ERR_LAYER_CORRUPT')
  })

  it('resolves duplicates as GNU tar does and stores symlinks verbatim', async () => {
    const dir = await outDir()
    const members: TarMember[] = [
      { name: 'd/', type: '5', mode: 0o700, mtime: 1000 },
      file('d/f', 'first version'),
      { name: 'd/link', type: '2', linkname: '../../../../etc/shadow' },
      file('d/f', 'second, last version', { mode: 0o600 }),
      { name: 'd/', type: '5', mode: 0o750, mtime: 2000 },
      file('x', 'a file that a directory replaces'),
      { name: 'x/', type: '5', mode: 0o755 },
      file('x/inner', 'inside')
    ]
    const tar = makeTar(members)
    const tarPath = join(dir, 'layer.tar')
    await writeFile(tarPath, tar)
    await convertBytes(createReadStream(tarPath), dir)
    const ref = join(dir, 'ref')
    const mnt = join(dir, 'mnt')
    await mkdir(ref)
    await mkdir(mnt)
    await run('tar', ['--numeric-owner', '-xpf', tarPath, '-C', ref])
    const devs = await views(join(dir, 'meta.erofs'), [join(dir, 'data.blob')], join(dir, 'views'))
    await run('fsck.erofs', [`--device=${devs[0]!}`, join(dir, 'meta.erofs')])
    await mountErofs(join(dir, 'meta.erofs'), devs, mnt)
    try {
      const a = await snapshot(mnt)
      const e = await snapshot(ref)
      delete a.entries['.']
      delete e.entries['.']
      expect(a).toEqual(e)
      expect(await readFile(join(mnt, 'd/f'), 'utf8')).toBe('second, last version')
      expect(a.entries['d/link']!.target).toBe('../../../../etc/shadow')
    } finally {
      await umount(mnt)
    }
  })
})

/**
 * Hostile v2 chunk tables (the metadata image's map from blob views to stored extents) and hostile stored bytes:
 * readChunkTable, checkImage, materializeBlob and decodeChunk refuse them with a named error, bounded before
 * anything is allocated or decompressed past a chunk's length.
 */
describe('hostile chunk tables and stored chunks', () => {
  let dir: string
  let tableAt: number
  let entAt: number
  const compressible = (seed: number, n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => `line ${seed}:${i % 97} of a compressible file\n`).join(''))

  beforeAll(async () => {
    dir = await tempDir('hostile-table')
    await convertBytes(makeTar([file('a', ''), { name: 'a', data: compressible(1, 400) }, { name: 'b', data: compressible(2, 900) }, { name: 'c', data: randomBytes(10_000) }]), dir, { chunkSize: 8192 })
    const img = await readFile(join(dir, 'meta.erofs'))
    tableAt = new ErofsReader(img).sb.blocks * 4096
    entAt = tableAt + 32 + 8 * img.readUInt32LE(tableAt + 20)
  })
  afterAll(async () => { if (dir !== undefined) await cleanup(dir) })

  async function hostile (mutate: (b: Buffer) => Buffer | undefined | void): Promise<string> {
    const b = await readFile(join(dir, 'meta.erofs'))
    const out = mutate(b) ?? b
    const p = join(dir, `hostile-${n++}.erofs`)
    await writeFile(p, out)
    return p
  }

  async function expectCorrupt (meta: string, pattern: RegExp): Promise<void> {
    for (const op of [async () => await readChunkTable(meta), async () => await checkImage(meta, { blobs: [join(dir, 'data.blob')] }), async () => await materializeBlob(meta, 1, join(dir, 'data.blob'), join(dir, `view-${n++}`))]) {
      const err = await op().then(() => undefined, (e: unknown) => e as Error & { code: string })
      expect(err, String(pattern)).toBeDefined()
      expect({ name: err!.name, code: err!.code }).toEqual({ name: 'CorruptImageError', code: 'ERR_IMAGE_CORRUPT' })
      expect(err!.message).toMatch(pattern)
    }
    expect((await readdir(dir)).filter(f => f.includes('.tmp-'))).toEqual([]) // no partial view left
  }

  it('accepts the honest image, with compressed and stored chunks', async () => {
    const t = await readChunkTable(join(dir, 'meta.erofs'))
    expect(t.version).toBe(3)
    expect(t.entries.map(e => e.compression).sort()).toEqual(expect.arrayContaining(['none', 'zstd']))
    await checkImage(join(dir, 'meta.erofs'), { blobs: [join(dir, 'data.blob')] })
  })

  it('refuses extents out of range', async () => {
    await expectCorrupt(await hostile(b => { b.writeBigUInt64LE(10_000_000n, entAt + 16) }), /entry 0 .*stored extent .* past the end of the blob/)
    await expectCorrupt(await hostile(b => { b.writeBigUInt64LE(2n ** 60n, entAt + 16) }), /stored offset .* out of range/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(1_000_000, entAt + 4) }), /past the end of the blob's view/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(tableAt + 24) + 1, entAt + 8) }), /length \d+ out of range/)
    // v3: the longest entry bounds every decode; it must lie in [chunk size, 16 chunk sizes], in whole blocks
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(tableAt + 16) * 17, tableAt + 24) }), /longest entry \d+ out of range/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(tableAt + 16) - 4096, tableAt + 24) }), /longest entry \d+ out of range/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(tableAt + 16) * 2 + 1, tableAt + 24) }), /longest entry \d+ out of range/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(entAt + 8) + 1, entAt + 12) }), /stored length .* out of range/)
    await expectCorrupt(await hostile(b => { b.writeUInt16LE(3, entAt) }), /device not in the device table/)
    await expectCorrupt(await hostile(b => { b.writeBigUInt64LE(1n << 62n, tableAt + 32) }), /stored size .* out of range/)
  })

  it('v3: check refuses a file chunk that does not fit in the entry holding it (a pack cut short)', async () => {
    const b0 = await readFile(join(dir, 'meta.erofs'))
    const lengths = Array.from({ length: b0.readUInt32LE(tableAt + 12) }, (_, i) => b0.readUInt32LE(entAt + 56 * i + 8))
    const pack = lengths.findIndex(l => l > 8192) // the tails of a and b share a pack longer than one chunk
    expect(pack).toBeGreaterThanOrEqual(0)
    const at = entAt + 56 * pack
    const meta = await hostile(b => { b.writeUInt32LE(b.readUInt32LE(at + 8) - 4096, at + 8) })
    const err = await checkImage(meta, { blobs: [join(dir, 'data.blob')] }).then(() => undefined, (e: unknown) => e as Error)
    expect(err?.name).toBe('CorruptImageError')
    expect(err?.message).toMatch(/chunk of \d+ bytes where the file needs \d+/)
  })

  it('refuses overlapping extents, in the view and in the blob', async () => {
    const e1 = entAt + 56
    await expectCorrupt(await hostile(b => { b.writeBigUInt64LE(b.readBigUInt64LE(entAt + 16), e1 + 16) }), /stored extents of blocks .* overlap/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(b.readUInt32LE(entAt + 4), e1 + 4) }), /overlap or are out of order/)
  })

  it('refuses huge counts before allocating, and unknown versions, compressions and chunk sizes', async () => {
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(0xffffffff, tableAt + 12) }), /4294967295 entries of 56 bytes do not fit/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(1000, tableAt + 20) }), /1000 devices, the device table has 1/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(4, tableAt + 8) }), /version 4 is not supported/)
    await expectCorrupt(await hostile(b => { b.writeUInt8(7, entAt + 2) }), /unknown compression 7/)
    await expectCorrupt(await hostile(b => { b.writeUInt8(2, entAt + 2) }), /lz4 chunks are reserved/)
    await expectCorrupt(await hostile(b => { b.writeUInt32LE(12345, tableAt + 16) }), /chunk size 12345 is not a power of two/)
    await expectCorrupt(await hostile(b => { b.fill(0, tableAt) }), /bad magic/)
    await expectCorrupt(await hostile(b => b.subarray(0, b.length - 10)), /entries of 56 bytes do not fit/) // cut inside the last entry
    await expectCorrupt(await hostile(b => b.subarray(0, tableAt + 20)), /missing: 20 bytes/)
  })

  it('bounds decompression to the chunk length: a zstd bomb is refused, not expanded', async () => {
    const bomb = zstdCompressSync(Buffer.alloc(256 * 1024 * 1024)) // 256 MiB of zeros in a few KiB
    expect(bomb.length).toBeLessThan(16 * 1024)
    const e = { device: 1, blkaddr: 0, length: 16 * 1024, digest: Buffer.alloc(32), compression: 'zstd' as const, storedOffset: 0, storedLength: bomb.length }
    const before = process.memoryUsage().arrayBuffers
    expect(() => decodeChunk(e, bomb)).toThrow(expect.objectContaining({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/decompresses past the chunk's 16384 bytes/) }))
    await expect(decodeChunkAsync(e, bomb)).rejects.toMatchObject({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/decompresses past/) })
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 1024 * 1024)
    // garbage, a short extent and a frame of the wrong bytes
    expect(() => decodeChunk({ ...e, storedLength: 100 }, randomBytes(100))).toThrow(expect.objectContaining({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/does not decompress/) }))
    expect(() => decodeChunk(e, bomb.subarray(1))).toThrow(expect.objectContaining({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/stored bytes, the chunk table says/) }))
    const other = zstdCompressSync(Buffer.alloc(16 * 1024, 1))
    expect(() => decodeChunk({ ...e, storedLength: other.length }, other)).toThrow(expect.objectContaining({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/chunk sha256/) }))

    // the same bomb in a blob: checkImage and materializeBlob refuse it and leave no view behind
    const t = await readChunkTable(join(dir, 'meta.erofs'))
    const victim = t.entries.findIndex(x => x.compression === 'zstd' && x.length >= 8192)
    expect(victim).toBeGreaterThanOrEqual(0)
    const small = zstdCompressSync(Buffer.alloc(64 * 1024 * 1024))
    const blob = await readFile(join(dir, 'data.blob'))
    const bombBlob = join(dir, 'bomb.blob')
    await writeFile(bombBlob, Buffer.concat([blob, small]))
    const meta = await hostile(b => {
      b.writeBigUInt64LE(BigInt(blob.length + small.length), tableAt + 32)
      const p = entAt + 56 * victim
      b.writeUInt32LE(small.length, p + 12)
      b.writeBigUInt64LE(BigInt(blob.length), p + 16)
    })
    await expect(checkImage(meta, { blobs: [bombBlob] })).rejects.toMatchObject({ name: 'ChunkDigestMismatchError', message: expect.stringMatching(/decompresses past the chunk's 8192 bytes/) })
    const out = join(dir, 'bomb.view')
    await expect(materializeBlob(meta, 1, bombBlob, out)).rejects.toMatchObject({ name: 'ChunkDigestMismatchError' })
    expect((await readdir(dir)).filter(f => f.startsWith('bomb.view'))).toEqual([])
  })
})
