import { describe, it, expect } from 'vitest'
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { seal, open } from '@guoce/native-crypto'

const key = randomBytes(32)
const nonce = randomBytes(12)
const aad = randomBytes(4)

function nodeSeal (plain: Buffer): { ct: Buffer, tag: Buffer } {
  const c = createCipheriv('aes-256-gcm', key, nonce); c.setAAD(aad)
  const ct = Buffer.concat([c.update(plain), c.final()])
  return { ct, tag: c.getAuthTag() }
}

describe('native AES-256-GCM', () => {
  it('seals gathered inputs exactly as node:crypto does, and node:crypto opens it', () => {
    const parts = [randomBytes(41), randomBytes(0), randomBytes(262_144), randomBytes(17)]
    const plain = Buffer.concat(parts)
    const out = Buffer.alloc(plain.byteLength); const tag = Buffer.alloc(16)
    seal(key, nonce, aad, parts, out, tag)
    const ref = nodeSeal(plain)
    expect(out.equals(ref.ct)).toBe(true)
    expect(tag.equals(ref.tag)).toBe(true)
    const d = createDecipheriv('aes-256-gcm', key, nonce); d.setAAD(aad); d.setAuthTag(tag)
    expect(Buffer.concat([d.update(out), d.final()]).equals(plain)).toBe(true)
  })

  it('opens node:crypto records in place; a flipped bit in data, tag or aad is refused', () => {
    const plain = randomBytes(100_000)
    const { ct, tag } = nodeSeal(plain)
    const data = Buffer.from(ct)
    expect(open(key, nonce, aad, data, tag)).toBe(true)
    expect(data.equals(plain)).toBe(true)
    const flips: Array<[Buffer, Buffer, Buffer]> = []
    const bad = Buffer.from(ct); bad[5000] = bad[5000]! ^ 1; flips.push([bad, tag, aad])
    const badTag = Buffer.from(tag); badTag[0] = badTag[0]! ^ 1; flips.push([Buffer.from(ct), badTag, aad])
    const badAad = Buffer.from(aad); badAad[3] = badAad[3]! ^ 1; flips.push([Buffer.from(ct), tag, badAad])
    for (const [d, t, a] of flips) expect(open(key, nonce, a, d, t)).toBe(false)
    const wrongNonce = Buffer.from(nonce); wrongNonce[11] = wrongNonce[11]! ^ 1
    expect(open(key, wrongNonce, aad, Buffer.from(ct), tag)).toBe(false)
  })

  it('refuses wrong sizes with an error instead of touching memory', () => {
    const out = Buffer.alloc(10); const tag = Buffer.alloc(16)
    expect(() => { seal(key.subarray(0, 16), nonce, aad, [Buffer.alloc(10)], out, tag) }).toThrow(/key must be 32 bytes/)
    expect(() => { seal(key, nonce, aad, [Buffer.alloc(11)], out, tag) }).toThrow(/do not fill out/)
    expect(() => { seal(key, nonce, aad, [Buffer.alloc(9)], out, tag) }).toThrow(/do not fill out/)
    expect(() => { open(key, nonce, aad, Buffer.alloc(10), Buffer.alloc(15)) }).toThrow(/tag must be 16 bytes/)
  })
})
