import { describe, it, expect } from 'vitest'
import { randomBytes } from 'node:crypto'
import { taskIdOf, taskIdFrom, checkPieceLength, MAX_PIECE_COUNT, credentialHash, normalizeUrl, pieceLayout, pieceRange, verifyPiece, sha256, digestToCid, cidToDigest, parseDigest, formatDigest, Bitmap, parseSourceUrl, BufferPool, verifyPieceAsync } from '../src/index.js'

describe('content', () => {
  it('maps OCI digests to CIDs and back', () => {
    const d = formatDigest(sha256(Buffer.from('hello')))
    expect(d).toBe('sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824')
    const cid = digestToCid(d)
    expect(cid.toString()).toMatch(/^b/)
    expect(cidToDigest(cid.toString())).toBe(d)
  })

  it('rejects malformed digests by name', () => {
    expect(() => parseDigest('sha256:abc')).toThrow(expect.objectContaining({ name: 'InvalidDigestError' }))
    expect(() => parseDigest('md5:' + 'a'.repeat(64))).toThrow(expect.objectContaining({ name: 'InvalidDigestError' }))
  })

  it('drops cache busters from the task id but keeps signatures and tokens apart (credentials)', () => {
    const a = taskIdOf({ url: 'http://h/f.bin?b=2&a=1&_=1&Expires=1' })
    expect(taskIdOf({ url: 'http://h/f.bin?a=1&b=2&_=2' })).toBe(a)
    expect(taskIdOf({ url: 'http://h/f.bin?a=2&b=2' })).not.toBe(a)
    expect(taskIdOf({ url: 'http://h/f.bin', tag: 't' })).not.toBe(taskIdOf({ url: 'http://h/f.bin' }))
    expect(normalizeUrl('http://h/x#frag')).toBe('http://h/x')
    // a signed URL or a token is a credential: it never names the anonymous task, nor another credential's
    const anon = taskIdOf({ url: 'http://h/f.bin' })
    const signedX = taskIdOf({ url: 'http://h/f.bin?X-Amz-Signature=x' })
    expect(signedX).not.toBe(anon)
    expect(taskIdOf({ url: 'http://h/f.bin?X-Amz-Signature=y' })).not.toBe(signedX)
    expect(taskIdOf({ url: 'http://h/f.bin?X-Amz-Signature=x&X-Amz-Date=2' })).toBe(signedX)
    expect(taskIdOf({ url: 'http://h/f.bin?token=WRONG' })).not.toBe(taskIdOf({ url: 'http://h/f.bin?token=RIGHT' }))
    const bearer = taskIdOf({ url: 'http://h/f.bin', headers: { Authorization: 'Bearer a' } })
    expect(bearer).not.toBe(anon)
    expect(taskIdOf({ url: 'http://h/f.bin', headers: { authorization: 'Bearer a' } })).toBe(bearer)
    expect(taskIdOf({ url: 'http://h/f.bin', headers: { authorization: 'Bearer b' } })).not.toBe(bearer)
    expect(taskIdOf({ url: 'http://h/f.bin', headers: { accept: 'x' } })).toBe(anon)
    expect(credentialHash({ url: 'http://h/f.bin', headers: { accept: 'x' } })).toBeUndefined()
    // the origin's validator is part of a URL task's id: changed content is a new task
    expect(taskIdOf({ url: 'http://h/f.bin', version: 'etag:"1"' })).not.toBe(taskIdOf({ url: 'http://h/f.bin', version: 'etag:"2"' }))
    expect(taskIdOf({ url: 'http://h/f.bin', version: '' })).toBe(anon)
  })

  it('keys by digest when the digest is known', () => {
    const digest = 'sha256:' + 'a'.repeat(64)
    expect(taskIdOf({ url: 'http://one/x', digest })).toBe(taskIdOf({ url: 'http://two/y', digest }))
  })

  it('rejects malformed URLs by name', () => {
    expect(() => parseSourceUrl('not a url')).toThrow(expect.objectContaining({ name: 'InvalidUrlError' }))
    expect(() => parseSourceUrl('ftp://h/x')).toThrow(expect.objectContaining({ name: 'InvalidUrlError' }))
  })

  it('lays out pieces as clamped powers of two', () => {
    expect(pieceLayout(64 * 1024 * 1024)).toEqual({ pieceLength: 1024 * 1024, pieceCount: 64 })
    expect(pieceLayout(1)).toEqual({ pieceLength: 1024 * 1024, pieceCount: 1 })
    expect(pieceLayout(2 * 1024 ** 3)).toEqual({ pieceLength: 2 * 1024 * 1024, pieceCount: 1024 })
    expect(pieceLayout(0).pieceCount).toBe(0)
    expect(pieceLayout(4 * 1024 ** 3).pieceLength).toBe(4 * 1024 * 1024)
    expect(pieceLayout(1024 ** 4).pieceLength).toBe(16 * 1024 * 1024)
    expect(pieceRange(1, 10, 15)).toEqual({ start: 10, end: 15 })
    expect(() => pieceRange(2, 10, 15)).toThrow(RangeError)
  })

  it('takes a piece length a request names: a power of two in bounds, part of the task id, grown past 2^20 pieces', () => {
    const KiB = 1024
    expect(pieceLayout(8 * 1024 * KiB, 64 * KiB)).toEqual({ pieceLength: 64 * KiB, pieceCount: 128 })
    expect(pieceLayout(1, 64 * KiB)).toEqual({ pieceLength: 64 * KiB, pieceCount: 1 })
    // 256 GiB at 64 KiB would be 2^22 pieces: the named length doubles until the count fits
    expect(pieceLayout(256 * 1024 ** 3, 64 * KiB)).toEqual({ pieceLength: 256 * KiB, pieceCount: MAX_PIECE_COUNT })
    expect(checkPieceLength(128 * KiB)).toBe(128 * KiB)
    for (const bad of [0, 1000, 32 * KiB, 96 * KiB, 32 * 1024 * KiB, 1.5, -64 * KiB]) expect(() => checkPieceLength(bad)).toThrow(RangeError)
    const url = 'http://h/blob'
    const named = taskIdOf({ url, pieceLength: 128 * KiB })
    expect(named).not.toBe(taskIdOf({ url }))
    expect(named).not.toBe(taskIdOf({ url, pieceLength: 256 * KiB }))
    expect(named).toBe(taskIdFrom({ url, pieceLength: 128 * KiB }))
    expect(() => taskIdOf({ url, pieceLength: 1000 })).toThrow(RangeError)
  })

  it('verifies pieces and names the mismatch', () => {
    const data = Buffer.from('piece data')
    verifyPiece(0, data, sha256(data))
    const bad = Buffer.from(data); bad[0] = 0
    expect(() => verifyPiece(3, bad, sha256(data))).toThrow(expect.objectContaining({ name: 'PieceDigestMismatchError' }))
  })

  it('verifies pieces on the thread pool the same way', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 1)
    await verifyPieceAsync(0, data, sha256(data))
    const bad = Buffer.from(data); bad[bad.length - 1] = bad[bad.length - 1]! ^ 1
    await expect(verifyPieceAsync(3, bad, sha256(data))).rejects.toMatchObject({ name: 'PieceDigestMismatchError' })
  })

  it('tracks a bitmap and survives a round trip', () => {
    const b = new Bitmap(20)
    b.set(0); b.set(9); b.set(19)
    expect(b.set(9)).toBe(false)
    const c = new Bitmap(20, b.bytes)
    expect(c.count).toBe(3)
    expect([...c.present()]).toEqual([0, 9, 19])
    expect([...c.missing()].length).toBe(17)
  })
})

describe('piece buffer pool', () => {
  it('reuses released buffers by size, once per release, up to its byte cap', () => {
    const pool = new BufferPool(3000)
    const a = pool.acquire(1000)
    const b = pool.acquire(1000)
    expect(a.buf).not.toBe(b.buf)
    a.release(); a.release() // idempotent: a second release must not hand the buffer out twice
    expect(pool.retainedBytes).toBe(1000)
    const c = pool.acquire(1000)
    const d = pool.acquire(1000)
    expect(c.buf).toBe(a.buf)
    expect(d.buf).not.toBe(a.buf)
    expect(pool.acquire(500).buf.byteLength).toBe(500) // another size is never served from the 1000s
    for (const l of [b, c, d]) l.release()
    expect(pool.retainedBytes).toBe(3000)
    const e = pool.acquire(2000); e.release() // over the cap: dropped, not kept
    expect(pool.retainedBytes).toBe(3000)
  })
})
