import { describe, it, expect } from 'vitest'
import { fullCollection } from '../src/reclaim.js'
import { trimHeap } from '@guoce/native-crypto'

const MiB = 1024 * 1024

/** what a hostile host leaves behind: many small buffers (below glibc's mmap threshold), touched, then dropped */
function litter (): number {
  const held: Buffer[] = []
  for (let i = 0; i < 2048; i++) held.push(Buffer.alloc(64 * 1024, i))
  return process.memoryUsage.rss()
}

async function reclaimed (before: number, within: number): Promise<number> {
  const end = Date.now() + within
  let rss = process.memoryUsage.rss()
  while (Date.now() < end) {
    fullCollection()
    // V8 frees array buffers on its sweeper thread after the collection; then the C heap can be trimmed
    await new Promise(resolve => setTimeout(resolve, 100))
    trimHeap()
    rss = process.memoryUsage.rss()
    if (rss - before < 32 * MiB) break
  }
  return rss
}

describe('reclaim', () => {
  it('a full collection and a heap trim give dropped buffers back to the OS', async () => {
    expect(fullCollection()).toBe(true)
    trimHeap()
    const before = process.memoryUsage.rss()
    const grown = litter()
    expect(grown - before).toBeGreaterThan(96 * MiB)
    const after = await reclaimed(before, 5_000)
    expect(after - before).toBeLessThan(32 * MiB)
  })
})
