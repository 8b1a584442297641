import { describe, it, expect } from 'vitest'
import { fullCollection } from '../src/reclaim.js'
import { trimHeap } from '@guoce/native-crypto'

describe('reclaim', () => {
  it('a full collection and a heap trim give dropped buffers back to the OS', () => {
    expect(fullCollection()).toBe(true)
    trimHeap()
    const before = process.memoryUsage.rss()
    // what a hostile host leaves behind: many small buffers (below glibc's mmap threshold), touched, then dropped
    let held: Buffer[] | undefined = []
    for (let i = 0; i < 2048; i++) held.push(Buffer.alloc(64 * 1024, i))
    const grown = process.memoryUsage.rss()
    expect(grown - before).toBeGreaterThan(96 * 1024 * 1024)
    held = undefined
    fullCollection()
    trimHeap()
    const after = process.memoryUsage.rss()
    expect(after - before).toBeLessThan(32 * 1024 * 1024)
  })
})
