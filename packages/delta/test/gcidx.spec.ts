import { describe, it, expect, afterEach } from 'vitest'
import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  applyDelta, chunkFile, cutBuffer, encodeIndex, indexOf, parseIndex, planDelta, DEFAULT_PARAMS, INDEX_HEADER_BYTES, INDEX_ENTRY_BYTES,
  MAX_INDEX_CHUNKS, type ChunkIndex, type RangeSource
} from '../src/index.js'

const dirs: string[] = []
afterEach(async () => { for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true }) })
async function tmp (): Promise<string> { const d = await mkdtemp(join(tmpdir(), 'guoce-delta-')); dirs.push(d); return d }
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

async function indexed (data: Buffer): Promise<{ path: string, ix: ChunkIndex }> {
  const path = join(await tmp(), 'f.bin')
  await writeFile(path, data)
  return { path, ix: indexOf(await chunkFile(path), DEFAULT_PARAMS) }
}

/** a source that serves `data` and counts what it sent */
function memorySource (data: Buffer): RangeSource & { sent: number } {
  const s = {
    sent: 0,
    async read (offset: number, length: number) { s.sent += length; return data.subarray(offset, offset + length) }
  }
  return s
}

describe('FastCDC chunking', () => {
  it('cuts within min..max, tiles the file, and cuts the same way however the file is read', async () => {
    const data = randomBytes(20 * 1024 * 1024 + 12345)
    const { ix } = await indexed(data)
    expect(ix.size).toBe(data.length)
    expect(ix.sha256.toString('hex')).toBe(sha(data))
    for (let i = 0; i < ix.count; i++) {
      expect(ix.lengths[i]).toBeLessThanOrEqual(DEFAULT_PARAMS.max)
      if (i < ix.count - 1) expect(ix.lengths[i]).toBeGreaterThanOrEqual(DEFAULT_PARAMS.min)
    }
    // the average lands near the target (random data: expect within a factor of two)
    const avg = data.length / ix.count
    expect(avg).toBeGreaterThan(DEFAULT_PARAMS.avg / 2)
    expect(avg).toBeLessThan(DEFAULT_PARAMS.avg * 2)
    // one call over the whole buffer gives the cut points chunkFile found reading 8 MiB at a time
    const lengths: number[] = []
    cutBuffer(data, data.length, true, DEFAULT_PARAMS, lengths)
    expect(lengths).toEqual([...ix.lengths])
  })

  it('an insertion moves only the cut points near it: almost every chunk of the old file is reused', async () => {
    // pseudo-random bytes from a fixed key (AES-CTR): the same file every run. With random bytes the
    // count varied: after an insertion the cut points usually fall back in place at the next chunk, but
    // min-size skipping can carry the shift over a few more (5 chunks seen once in many runs)
    const stream = (key: number, n: number): Buffer => createCipheriv('aes-256-ctr', Buffer.alloc(32, key), Buffer.alloc(16)).update(Buffer.alloc(n))
    const a = stream(1, 8 * 1024 * 1024)
    const b = Buffer.concat([a.subarray(0, 3_000_000), stream(2, 777), a.subarray(3_000_000)])
    const A = await indexed(a)
    const B = await indexed(b)
    const plan = planDelta(B.ix, await chunkFile(A.path))
    // the insertion touches a few chunks of the file's ~128; fixed-size blocks would lose every block after it
    expect(plan.fetchChunks).toBeLessThanOrEqual(4)
    expect(plan.fetchBytes).toBeLessThan(4 * DEFAULT_PARAMS.max)
    expect(plan.reusedBytes + plan.fetchBytes).toBe(b.length)
  })
})

describe('.gcidx format', () => {
  it('round trips', async () => {
    const { ix } = await indexed(randomBytes(3 * 1024 * 1024 + 5))
    const bytes = encodeIndex(ix)
    expect(bytes.length).toBe(INDEX_HEADER_BYTES + ix.count * INDEX_ENTRY_BYTES)
    const back = parseIndex(bytes)
    expect(back.count).toBe(ix.count)
    expect(back.size).toBe(ix.size)
    expect(back.params).toEqual(DEFAULT_PARAMS)
    expect(back.sha256.equals(ix.sha256)).toBe(true)
    expect([...back.offsets]).toEqual([...ix.offsets])
    expect([...back.lengths]).toEqual([...ix.lengths])
    expect(back.digests.equals(ix.digests)).toBe(true)
    expect(encodeIndex(back).equals(bytes)).toBe(true)
    // an empty file: no chunks
    const empty = await indexed(Buffer.alloc(0))
    expect(empty.ix.count).toBe(0)
    expect(parseIndex(encodeIndex(empty.ix)).size).toBe(0)
  })

  it('refuses hostile indexes with a clear IndexFormatError', async () => {
    const { ix } = await indexed(randomBytes(1024 * 1024))
    const good = encodeIndex(ix)
    const n = ix.count
    const mut = (f: (b: Buffer) => void): Buffer => { const b = Buffer.from(good); f(b); return b }
    const entry = (i: number): number => INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES
    const cases: Array<[string, Buffer, RegExp]> = [
      ['empty', Buffer.alloc(0), /truncated: 0 bytes/],
      ['short header', good.subarray(0, 40), /truncated: 40 bytes/],
      ['truncated entry', good.subarray(0, good.length - 1), /truncated: .* chunks need/],
      ['trailing bytes', Buffer.concat([good, Buffer.alloc(3)]), /3 bytes after the last/],
      ['magic', mut(b => { b.write('NOTANIDX', 0, 'latin1') }), /not a chunk index/],
      ['version', mut(b => { b.writeUInt32LE(2, 8) }), /version 2/],
      ['algorithm', mut(b => { b.writeUInt32LE(9, 12) }), /algorithm 9/],
      ['max past the bound', mut(b => { b.writeUInt32LE(0xffffffff, 24) }), /declared chunk parameters/],
      ['avg not a power of two', mut(b => { b.writeUInt32LE(65535, 20) }), /power of two/],
      ['count past the bound (nothing allocated)', mut(b => { b.writeUInt32LE(MAX_INDEX_CHUNKS + 1, 28) }), /declares \d+ chunks: at most/],
      ['huge count within the bound', mut(b => { b.writeUInt32LE(MAX_INDEX_CHUNKS, 28) }), /cannot be|truncated/],
      ['file size 2^63', mut(b => { b.writeBigUInt64LE(1n << 63n, 32) }), /declares a file of/],
      ['file size the chunks cannot hold', mut(b => { b.writeBigUInt64LE(BigInt(n * DEFAULT_PARAMS.max + 1), 32) }), /cannot be/],
      ['file size one more than the chunks', mut(b => { b.writeBigUInt64LE(BigInt(ix.size + 1), 32) }), /cover \d+ bytes of a/],
      ['gap', mut(b => { b.writeBigUInt64LE(BigInt(ix.offsets[1]! + 1), entry(1)) }), /a gap before chunk 1/],
      ['overlap', mut(b => { b.writeBigUInt64LE(BigInt(ix.offsets[1]! - 1), entry(1)) }), /chunk 1 .* overlaps/],
      ['zero length', mut(b => { b.writeUInt32LE(0, entry(0) + 8) }), /chunk 0: length 0/],
      ['chunk past max', mut(b => { b.writeUInt32LE(DEFAULT_PARAMS.max + 1, entry(0) + 8) }), /chunk 0: length \d+ is outside/],
      ['chunk below min', mut(b => { b.writeUInt32LE(100, entry(0) + 8) }), /below the minimum/],
      ['offset 2^64-1', mut(b => { b.writeBigUInt64LE(0xffffffffffffffffn, entry(2)) }), /chunk 2: offset/]
    ]
    for (const [name, bytes, msg] of cases) {
      let err: Error | undefined
      try { parseIndex(bytes, 'x.gcidx') } catch (e) { err = e as Error }
      expect(err?.name, name).toBe('IndexFormatError')
      expect(err?.message, name).toMatch(/^x\.gcidx: /)
      expect(err?.message, name).toMatch(msg)
    }
  })
})

describe('applyDelta', () => {
  it('writes the new file from the old one and fetches only the chunks it lacks', async () => {
    const a = randomBytes(6 * 1024 * 1024)
    const patch = randomBytes(100_000)
    const b = Buffer.concat([a.subarray(0, 2_000_000), patch, a.subarray(2_500_000)])
    const A = await indexed(a)
    const B = await indexed(b)
    const out = join(await tmp(), 'new')
    const src = memorySource(b)
    const r = await applyDelta({ index: B.ix, old: A.path, out, source: src })
    expect(sha(await readFile(out))).toBe(sha(b))
    expect(r.digest).toBe(`sha256:${sha(b)}`)
    expect(src.sent).toBe(r.fetchBytes)
    // the patch and the chunks cut around its two edges: far less than the file
    expect(r.fetchBytes).toBeGreaterThanOrEqual(patch.length)
    expect(r.fetchBytes).toBeLessThan(patch.length + 4 * DEFAULT_PARAMS.max)
  })

  it('refuses a lying chunk digest, a lying file digest, and a source that sends other bytes', async () => {
    const a = randomBytes(2 * 1024 * 1024)
    const b = Buffer.concat([randomBytes(300_000), a])
    const A = await indexed(a)
    const B = await indexed(b)
    const out = join(await tmp(), 'new')
    const lie = parseIndex(encodeIndex(B.ix))
    lie.digests[0] = lie.digests[0]! ^ 1
    await expect(applyDelta({ index: lie, old: A.path, out, source: memorySource(b) })).rejects.toThrow(/chunk 0 .*hash to/)
    const lie2 = parseIndex(encodeIndex(B.ix))
    lie2.sha256[5] = lie2.sha256[5]! ^ 1
    await expect(applyDelta({ index: lie2, old: A.path, out, source: memorySource(b) })).rejects.toThrow(/assembled file hashes to/)
    const corrupt = Buffer.from(b); corrupt[1000] = corrupt[1000]! ^ 0xff
    const err = await applyDelta({ index: B.ix, old: A.path, out, source: memorySource(corrupt) }).then(() => undefined, (e: unknown) => e as Error)
    expect(err?.name).toBe('IndexMismatchError')
  })
})
