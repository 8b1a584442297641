/**
 * Hostile and dead sources. This process serves the mount (lazyMount with a source that lies or never
 * answers); every read comes from a child process under `timeout -s KILL`.
 * - A source that returns wrong bytes is refused and asked again: readers get the right bytes, or EIO
 *   when no attempt verifies; never wrong bytes, and nothing wrong is kept in the chunk store.
 * - A source that never answers (origin down): that read fails with EIO after a bounded time while reads
 *   of other chunks keep working.
 */
import { createHash } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { lazyMount, localBlobSource, type BlobSource, type LazyMount } from '../src/index.js'
import { LIST_TREE, buildImage, mountsUnder, sh, sweepMounts, tempDir } from './helpers.js'

describe('lazy mount against hostile and dead sources', () => {
  let work = ''
  let img: { src: string, lazy: string, flat: string }
  let expected = ''
  let mounts: LazyMount[] = []
  let n = 0
  const mountWith = async (source: BlobSource, opts: { fetchTimeoutMs?: number, fetchAttempts?: number } = {}): Promise<{ m: LazyMount, mnt: string }> => {
    const base = join(work, `m${n++}`)
    const mnt = join(base, 'mnt')
    await mkdir(mnt, { recursive: true })
    const m = await lazyMount(`oci:${img.lazy}:v1`, mnt, { stateDir: join(base, 'state'), chunkDir: join(base, 'chunks'), source, ...opts })
    mounts.push(m)
    return { m, mnt }
  }

  beforeAll(async () => {
    work = await tempDir('hostile')
    img = await buildImage(work, 64 * 1024)
    const r = await sh(LIST_TREE, [img.flat])
    expect(r.code, r.stderr).toBe(0)
    expected = r.stdout
  })
  afterEach(async () => {
    for (const m of mounts) await m.unmount().catch(() => {})
    mounts = []
    expect(await sweepMounts(work), 'mounts left behind').toEqual([])
  })
  afterAll(async () => {
    await sweepMounts(work)
    if (work !== '') await rm(work, { recursive: true, force: true })
  })

  it('refuses wrong bytes from a source and asks again; readers see only the right bytes', async () => {
    const honest = localBlobSource(join(img.lazy))
    const asked = new Map<string, number>()
    // lies the first time it is asked for each range (a corrupt peer), then tells the truth
    const liar: BlobSource = {
      async read (digest, offset, length, signal) {
        const key = `${digest}@${offset}`
        const k = (asked.get(key) ?? 0) + 1
        asked.set(key, k)
        const b = await honest.read(digest, offset, length, signal)
        if (k === 1) b[b.length >> 1]! ^= 0x01
        return b
      },
      close: async () => { await honest.close() }
    }
    const { m, mnt } = await mountWith(liar)
    const readers = await Promise.all([sh(LIST_TREE, [mnt]), sh(LIST_TREE, [mnt])])
    for (const r of readers) {
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toBe(expected)
    }
    const s = m.stats()
    expect(s.server.refused).toBeGreaterThan(10)
    expect(s.server.refused).toBe(s.store.fetches) // every chunk lied about once, then fetched right
    expect(s.server.failedReads).toBe(0)
  })

  it('a chunk no attempt verifies fails its reads with EIO and is not stored; the rest reads right', async () => {
    const honest = localBlobSource(join(img.lazy))
    // which chunk holds the start of /data/big? learn it from an honest mount's first fetch
    let target: { digest: string, offset: number } | undefined
    const probe: BlobSource = {
      async read (digest, offset, length, signal) { target ??= { digest, offset }; return await honest.read(digest, offset, length, signal) },
      close: async () => {}
    }
    const first = await mountWith(probe)
    expect((await sh('head -c 100 "$1"/data/big > /dev/null', [first.mnt])).code).toBe(0)
    expect(target).toBeDefined()
    await first.m.unmount()

    const poisoned: BlobSource = {
      async read (digest, offset, length, signal) {
        const b = await honest.read(digest, offset, length, signal)
        if (digest === target!.digest && offset === target!.offset) b[0]! ^= 0xff
        return b
      },
      close: async () => { await honest.close() }
    }
    const { m, mnt } = await mountWith(poisoned)
    const bad = await sh('head -c 100 "$1"/data/big | sha256sum', [mnt], 30)
    expect(bad.signal).toBeNull()
    expect(bad.stderr).toMatch(/Input\/output error/)
    // the wrong bytes never reached the reader: nothing, not a hash of wrong bytes
    const wrong = createHash('sha256').update('').digest('hex')
    expect(bad.stdout.startsWith(wrong)).toBe(true)
    // asked DEFAULT_FETCH_ATTEMPTS (3) times; the kernel's retries of the failed read failed at once
    expect(m.stats().server.refused).toBe(3)
    expect(m.stats().server.failedReads).toBeGreaterThanOrEqual(1)
    // everything else still reads right
    const rest = await sh('cd "$1" && sha256sum data/multi usr/lib/multi-again etc/passwd bin/busybox', [mnt])
    expect(rest.code, rest.stderr).toBe(0)
    const ref = await sh('cd "$1" && sha256sum data/multi usr/lib/multi-again etc/passwd bin/busybox', [img.flat])
    expect(rest.stdout).toBe(ref.stdout)
  })

  it('origin down: a read of a missing chunk fails with EIO in bounded time while other reads go on', async () => {
    const honest = localBlobSource(join(img.lazy))
    let hung = 0
    // never answers for the chunks of /data/big's blob past its first MiB (until aborted)
    let bigBlob: string | undefined
    let firstBlob: string | undefined
    const dead: BlobSource = {
      async read (digest, offset, length, signal) {
        firstBlob ??= digest
        if (digest === bigBlob && offset >= 1 << 20) {
          hung++
          await new Promise((_resolve, reject) => { signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true }) })
        }
        return await honest.read(digest, offset, length, signal)
      },
      close: async () => { await honest.close() }
    }
    const { m, mnt } = await mountWith(dead, { fetchTimeoutMs: 1_000, fetchAttempts: 2 })
    // the first read of the mount is of /data/big: its blob is the first one asked for
    const probeFirst = await sh('head -c 1 "$1"/data/big > /dev/null', [mnt])
    expect(probeFirst.code, probeFirst.stderr).toBe(0)
    bigBlob = firstBlob
    expect(bigBlob).toMatch(/^sha256:/)

    const slow = sh('tail -c 100000 "$1"/data/big > /dev/null', [mnt], 30)
    // meanwhile other reads are served at once
    await new Promise(resolve => setTimeout(resolve, 200))
    const other = await sh('cd "$1" && sha256sum data/multi bin/busybox', [mnt], 10)
    const ref = await sh('cd "$1" && sha256sum data/multi bin/busybox', [img.flat])
    expect(other.code, other.stderr).toBe(0)
    expect(other.stdout).toBe(ref.stdout)
    expect(other.ms).toBeLessThan(1_500)
    const r = await slow
    expect(r.signal).toBeNull()
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/Input\/output error/)
    expect(r.ms).toBeGreaterThanOrEqual(1_900) // two attempts of 1 s
    expect(r.ms).toBeLessThan(10_000)
    expect(hung).toBeGreaterThanOrEqual(2)
    expect(await mountsUnder(work)).toHaveLength(5)
  })
})
