import { describe, it, expect } from 'vitest'
import { cut } from '@guoce/native-cdc'

describe('native cut', () => {
  it('refuses bad arguments instead of reading out of bounds', () => {
    const gear = new Int32Array(256)
    const buf = new Uint8Array(1000)
    expect(() => cut(buf, 2000, true, 64, 256, 1024, gear, new Uint32Array(100))).toThrow(/end must be within buf/)
    expect(() => cut(buf, 1000, true, 64, 300, 1024, gear, new Uint32Array(100))).toThrow(/power of two/)
    expect(() => cut(buf, 1000, true, 64, 256, 1024, new Int32Array(10), new Uint32Array(100))).toThrow(/gear/)
    expect(() => cut(buf, 1000, true, 64, 256, 1024, gear, new Uint32Array(2))).toThrow(/too small/)
    // all-zero gear: the hash is always 0, so the first byte past `min` cuts: chunks of min + 1
    const out = new Uint32Array(100)
    let n = cut(buf, 1000, true, 64, 256, 300, gear, out)
    expect([...out.subarray(0, n)]).toEqual([...Array(15).fill(65), 25])
    // every gear value 0x80000000: the top bit is always set, so no cut matches and every chunk is `max` long
    const ones = new Int32Array(256).fill(-2147483648)
    n = cut(buf, 1000, true, 64, 256, 300, ones, out)
    expect([...out.subarray(0, n)]).toEqual([300, 300, 300, 100])
    // without eof the tail shorter than max stays
    expect(cut(buf, 1000, false, 64, 256, 300, ones, out)).toBe(3)
  })
})
