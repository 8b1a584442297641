/**
 * The node chunk store: one fetch for concurrent readers of a chunk, a chunk corrupted on disk refused and
 * fetched again, quota with LRU eviction that spares pinned chunks, and an index rebuilt from disk.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openChunkStore } from '../src/index.js'

const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest()
const chunkPath = (dir: string, d: Buffer): string => join(dir, d.toString('hex').slice(0, 2), d.toString('hex'))

describe('node chunk store', () => {
  let dir = ''
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'guoce-chunks-')) })
  afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

  it('serves concurrent readers of one chunk from one fetch, then from disk', async () => {
    const store = await openChunkStore({ dir })
    const data = randomBytes(100_000)
    const d = sha(data)
    let fetches = 0
    const fetch = async (): Promise<Buffer> => { fetches++; await new Promise(resolve => setTimeout(resolve, 50)); return data }
    const got = await Promise.all(Array.from({ length: 16 }, async () => await store.get(d, data.length, fetch)))
    expect(fetches).toBe(1)
    for (const g of got) expect(g.equals(data)).toBe(true)
    await store.flush()
    expect((await readFile(chunkPath(dir, d))).equals(data)).toBe(true)
    // a fresh store (another process) finds it on disk
    const again = await openChunkStore({ dir })
    expect(again.has(d)).toBe(true)
    expect((await again.get(d, data.length, async () => { throw new Error('must not fetch') })).equals(data)).toBe(true)
    expect(again.stats()).toMatchObject({ hits: 1, fetches: 0 })
  })

  it('finds a chunk another process stored after it opened', async () => {
    const a = await openChunkStore({ dir })
    const b = await openChunkStore({ dir })
    const data = randomBytes(20_000)
    const d = sha(data)
    await a.get(d, data.length, async () => data)
    await a.flush()
    expect(b.has(d)).toBe(false)
    expect((await b.get(d, data.length, async () => { throw new Error('must not fetch') })).equals(data)).toBe(true)
    expect(b.stats()).toMatchObject({ hits: 1, fetches: 0, bytes: 20_000 })
  })

  it('refuses a chunk corrupted on disk and fetches it again', async () => {
    const data = randomBytes(50_000)
    const d = sha(data)
    const first = await openChunkStore({ dir })
    await first.get(d, data.length, async () => data)
    await first.flush()
    const bad = Buffer.from(data); bad[1234]! ^= 1
    await writeFile(chunkPath(dir, d), bad)
    const store = await openChunkStore({ dir, memory: 1 })
    let fetches = 0
    const got = await store.get(d, data.length, async () => { fetches++; return data })
    expect(got.equals(data)).toBe(true)
    expect(fetches).toBe(1)
    expect(store.stats().corrupt).toBe(1)
    await store.flush()
    expect((await readFile(chunkPath(dir, d))).equals(data)).toBe(true)
  })

  it('a failed fetch stores nothing and the next read fetches again', async () => {
    const store = await openChunkStore({ dir })
    const data = randomBytes(10_000)
    const d = sha(data)
    await expect(store.get(d, data.length, async () => { throw new Error('origin down') })).rejects.toThrow('origin down')
    expect(store.has(d)).toBe(false)
    expect((await store.get(d, data.length, async () => data)).equals(data)).toBe(true)
    // the chunk reaches the disk in the background: wait for it (the directory is removed after the test)
    await store.flush()
    expect((await readFile(chunkPath(dir, d))).equals(data)).toBe(true)
  })

  it('evicts least recently used chunks past the quota, never pinned ones', async () => {
    const store = await openChunkStore({ dir, quota: 3 * 40_000, memory: 1 })
    const chunks = Array.from({ length: 5 }, () => randomBytes(40_000))
    const ds = chunks.map(sha)
    store.pin(ds[0]!)
    for (const [i, c] of chunks.entries()) { await store.get(ds[i]!, c.length, async () => c); await store.flush() }
    // 0 pinned, 1 and 2 were the least recently used unpinned: evicted; 3 and 4 kept
    expect(ds.map(d => store.has(d))).toEqual([true, false, false, true, true])
    expect(store.stats()).toMatchObject({ evicted: 2, bytes: 3 * 40_000 })
    store.unpin(ds[0]!)
    const extra = randomBytes(40_000)
    await store.get(sha(extra), extra.length, async () => extra)
    await store.flush()
    expect(store.has(ds[0]!)).toBe(false) // unpinned now, and the least recently used
    const files = (await Promise.all((await readdir(dir)).map(async s => await readdir(join(dir, s))))).flat()
    expect(files).toHaveLength(3)
  })

  it('drops temp files a killed writer left and indexes the rest', async () => {
    const data = randomBytes(5000)
    const d = sha(data)
    const hex = d.toString('hex')
    await mkdir(join(dir, hex.slice(0, 2)), { recursive: true })
    await writeFile(join(dir, hex.slice(0, 2), `${hex}.abcdef.tmp`), data.subarray(0, 100))
    await writeFile(chunkPath(dir, d), data)
    const store = await openChunkStore({ dir })
    expect(store.stats().bytes).toBe(5000)
    expect(await readdir(join(dir, hex.slice(0, 2)))).toEqual([hex])
  })
})
