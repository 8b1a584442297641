/**
 * One blob as several metadata layers describe it (the snapshotter's shared blob server adds layers as they
 * arrive): the union of their chunk extents, sorted; a disagreement on the blob's size, on a shared chunk or
 * an overlap is refused (CorruptImageError) and nothing is merged.
 */
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import type { ChunkExtent } from '@guoce/image'
import { mergeBlob, type BlobFile } from '../src/index.js'

const D = `sha256:${'a'.repeat(64)}`
function extent (blkaddr: number, length: number, seed: string, storedOffset = blkaddr * 100): ChunkExtent {
  return { device: 1, blkaddr, length, digest: createHash('sha256').update(seed).digest(), compression: 'none', storedOffset, storedLength: length }
}

describe('mergeBlob', () => {
  it('unites the extents of two layers, sorted, each shared chunk once', () => {
    const a: BlobFile = { digest: D, size: 40960, extents: [extent(4, 4096, 'y'), extent(0, 4096, 'x')] }
    const b: BlobFile = { digest: D, size: 40960, extents: [extent(0, 4096, 'x'), extent(8, 100, 'z')] }
    const m = mergeBlob(a, b)
    expect(m.extents.map(e => e.blkaddr)).toEqual([0, 4, 8])
    expect(m.size).toBe(40960)
  })

  it('refuses layers that disagree on the size, on a shared chunk, or chunks that overlap', () => {
    const a: BlobFile = { digest: D, size: 40960, extents: [extent(0, 4096, 'x')] }
    expect(() => mergeBlob(a, { ...a, size: 8192 })).toThrow(/disagree on its size/)
    expect(() => mergeBlob(a, { ...a, extents: [extent(0, 4096, 'other')] })).toThrow(/disagree on its chunk/)
    expect(() => mergeBlob(a, { ...a, extents: [extent(0, 4096, 'x', 7)] })).toThrow(/disagree on its chunk/)
    expect(() => mergeBlob(a, { ...a, extents: [extent(0, 4096, 'x'), extent(1, 4096, 'w')] })).not.toThrow()
    expect(() => mergeBlob(a, { ...a, extents: [extent(0, 8192, 'x2')] })).toThrow(/disagree on its chunk/)
    expect(() => mergeBlob({ ...a, extents: [extent(0, 8192, 'long')] }, { ...a, extents: [extent(1, 4096, 'w')] })).toThrow(/overlap/)
    expect(() => mergeBlob(a, { ...a, digest: D })).not.toThrow()
  })
})
