import { describe, it, expect, afterEach } from 'vitest'
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { sha256, taskIdOf } from '@guoce/content'
import { openStore } from '../src/index.js'

const dirs: string[] = []
afterEach(async () => { for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true }) })
async function tmp (): Promise<string> { const d = await mkdtemp(join(tmpdir(), 'guoce-store-')); dirs.push(d); return d }

describe('task store', () => {
  it('stores pieces durably and reopens with the bitmap and digests', async () => {
    const dir = await tmp()
    const id = taskIdOf({ url: 'http://h/x' })
    const content = randomBytes(10 * 1024 + 5)
    const info = { taskId: id, contentLength: content.length, pieceLength: 1024, pieceCount: 11 }
    let store = await openStore({ dir })
    const t = await store.create(id, info, { url: 'http://h/x' })
    for (const n of [0, 3, 10]) {
      const piece = content.subarray(n * 1024, Math.min(content.length, (n + 1) * 1024))
      await t.writePiece(n, piece, sha256(piece))
    }
    expect(await t.readPiece(3)).toEqual(content.subarray(3072, 4096))
    expect(await t.readPiece(4)).toBeNull()
    await t.flush()
    expect(t.durableCount).toBe(3)
    await store.close()

    store = await openStore({ dir })
    expect(await store.list()).toEqual([id])
    const again = await store.get(id)
    expect(again).not.toBeNull()
    expect([...again!.bitmap.present()]).toEqual([0, 3, 10])
    expect(Buffer.from(again!.digests[10]!)).toEqual(Buffer.from(sha256(content.subarray(10240))))
    expect(again!.digests[1]).toBeUndefined()
    expect(await again!.readPiece(10)).toEqual(content.subarray(10240))
    await store.close()
  })

  it('rejects a piece of the wrong length and ignores a corrupt state file', async () => {
    const dir = await tmp()
    const id = taskIdOf({ url: 'http://h/y' })
    const store = await openStore({ dir })
    const t = await store.create(id, { taskId: id, contentLength: 2048, pieceLength: 1024, pieceCount: 2 })
    await expect(t.writePiece(0, Buffer.alloc(10), sha256(Buffer.alloc(10)))).rejects.toMatchObject({ name: 'InvalidParametersError' })
    await t.writePiece(1, Buffer.alloc(1024, 7), sha256(Buffer.alloc(1024, 7)))
    await t.flush()
    await store.close()
    const statePath = join(t.dir, 'state')
    const state = await readFile(statePath)
    await writeFile(statePath, state.subarray(0, state.length - 3))
    const s2 = await openStore({ dir })
    const t2 = await s2.get(id)
    expect(t2!.bitmap.count).toBe(0)
    await s2.close()
  })

  it('evicts least recently used tasks past the quota, never pinned ones', async () => {
    const dir = await tmp()
    const store = await openStore({ dir, quotaBytes: 3000 })
    const ids = ['a', 'b', 'c', 'd'].map(u => taskIdOf({ url: `http://h/${u}` }))
    const mk = async (id: string): Promise<void> => {
      const t = await store.create(id, { taskId: id, contentLength: 1000, pieceLength: 1000, pieceCount: 1 })
      await t.writePiece(0, Buffer.alloc(1000, 1), sha256(Buffer.alloc(1000, 1)))
    }
    await mk(ids[0]!); await mk(ids[1]!); await mk(ids[2]!)
    store.pin(ids[0]!)
    await store.get(ids[1]!) // b is now more recent than c
    await mk(ids[3]!)
    expect((await store.list()).sort()).toEqual([ids[0]!, ids[1]!, ids[3]!].sort())
    expect(store.usedBytes).toBe(3000)
    store.pin(ids[1]!); store.pin(ids[3]!)
    const e = taskIdOf({ url: 'http://h/e' })
    await expect(store.create(e, { taskId: e, contentLength: 1000, pieceLength: 1000, pieceCount: 1 })).rejects.toMatchObject({ name: 'NoSpaceError' })
    await store.close()
    const again = await openStore({ dir, quotaBytes: 3000 })
    expect(again.usedBytes).toBe(3000)
    await again.close()
  })
})
