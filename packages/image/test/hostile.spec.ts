/**
 * Hostile layers get a clear error (named, with a code) and leave no output behind.
 * Symlinks are stored, never followed; duplicate members resolve as GNU tar does (the last one wins).
 */
import { createReadStream } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { gzipSync, createGzip } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { convertLayer, type ConvertLayerOptions } from '../src/index.js'
import { cleanup, makeTar, mountErofs, requireTools, run, snapshot, tempDir, umount, type TarMember } from './helpers.js'

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
    await run('fsck.erofs', [`--device=${join(dir, 'data.blob')}`, join(dir, 'meta.erofs')])
    await mountErofs(join(dir, 'meta.erofs'), [join(dir, 'data.blob')], mnt)
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
