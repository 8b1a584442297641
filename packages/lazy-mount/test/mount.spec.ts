/**
 * `guoce image mount` as a user runs it (the serving process is a child; every read comes from other
 * child processes under `timeout -s KILL`): the format tests' corpus reads back exactly through the lazy
 * mount under concurrent readers; the node chunk store serves a second mount and refetches a chunk corrupted
 * on disk; the serving process killed mid-read gives its readers EIO at once, and the next mount or umount
 * leaves nothing mounted.
 */
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { runGuoce, startGuoce, stopAll, type Proc } from '@guoce/testkit'
import { LIST_TREE, buildImage, mountsUnder, sh, sweepMounts, tempDir } from './helpers.js'
import { rm } from 'node:fs/promises'

describe('guoce image mount', () => {
  let work = ''
  let img: { src: string, lazy: string, flat: string }
  let expected = ''
  let n = 0
  /** Fresh target, state and chunk dirs per mount (unique per test). */
  const dirs = async (chunks?: string): Promise<{ mnt: string, state: string, chunks: string }> => {
    const base = join(work, `m${n++}`)
    await mkdir(join(base, 'mnt'), { recursive: true })
    return { mnt: join(base, 'mnt'), state: join(base, 'state'), chunks: chunks ?? join(base, 'chunks') }
  }
  const mountArgs = (d: { mnt: string, state: string, chunks: string }): string[] => ['image', 'mount', `oci:${img.lazy}:v1`, d.mnt, '--state', d.state, '--chunks', d.chunks]
  const stats = (p: Proc): { server: { bytesRead: number, failedReads: number }, store: { fetches: number, hits: number, corrupt: number, fetchedBytes: number } } => {
    const line = p.stderr.map(l => { try { return JSON.parse(l) as Record<string, unknown> } catch { return {} } }).find(o => o.event === 'unmounted')
    if (line === undefined) throw new Error(`no stats line in:\n${p.stderr.join('\n')}`)
    return line as ReturnType<typeof stats>
  }

  beforeAll(async () => {
    work = await tempDir('mount')
    img = await buildImage(work, 64 * 1024)
    const r = await sh(LIST_TREE, [img.flat])
    expect(r.code, r.stderr).toBe(0)
    expected = r.stdout
    expect(expected).toContain('./data/multi')
  })
  afterEach(async () => {
    await stopAll()
    const left = await sweepMounts(work)
    expect(left, 'mounts left behind').toEqual([])
  })
  afterAll(async () => {
    await stopAll()
    await sweepMounts(work)
    if (work !== '') await rm(work, { recursive: true, force: true })
  })

  for (const mode of ['erofs', 'fuse'] as const) {
  it(`--mode ${mode}: reads back the source image exactly under concurrent readers; umount undoes every mount`, async () => {
    const d = await dirs()
    const p = await startGuoce([...mountArgs(d), '--mode', mode])
    expect(p.ready).toMatchObject({ event: 'mounted', target: d.mnt })
    // erofs: FUSE blobs, 3 EROFS layers, overlay; fuse: 3 FUSE layers, overlay
    expect((await mountsUnder(work)).length).toBe(mode === 'erofs' ? 5 : 4)
    const readers = await Promise.all(Array.from({ length: 4 }, async () => await sh(LIST_TREE, [d.mnt])))
    // FUSE mode serves times before 1970 as 1970 (fuse-native's stat holds unsigned times; doc/ARCHITECTURE.md)
    const want = mode === 'erofs' ? expected : expected.replaceAll('|-1000|0:0', '|0|0:0')
    if (mode === 'fuse') expect(want).not.toBe(expected)
    for (const r of readers) {
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toBe(want)
    }
    const u = await runGuoce(['image', 'umount', d.mnt, '--state', d.state])
    expect(u.code, u.stderr).toBe(0)
    expect(await p.exited).toEqual({ code: 0, signal: null })
    expect(await mountsUnder(work)).toEqual([])
    expect(await readdir(d.state)).toEqual([])
    const s = stats(p)
    expect(s.server.failedReads).toBe(0)
    // every chunk fetched once however many readers read it
    expect(s.store.fetchedBytes).toBeLessThanOrEqual(s.server.bytesRead)
  })
  }

  it('a second mount reads from the node chunk store; a chunk corrupted there is refused and fetched again', async () => {
    const first = await dirs()
    const p1 = await startGuoce(mountArgs(first))
    expect((await sh('cat "$1"/data/multi "$1"/data/big > /dev/null', [first.mnt])).code).toBe(0)
    p1.child.kill('SIGINT')
    expect(await p1.exited).toEqual({ code: 0, signal: null })
    const fetched = stats(p1).store.fetches
    expect(fetched).toBeGreaterThan(40) // 700 KB + 2.5 MB in 64 KiB chunks

    // flip a byte in one stored chunk
    const sub = (await readdir(first.chunks)).find(s => /^[0-9a-f]{2}$/.test(s))!
    const name = (await readdir(join(first.chunks, sub)))[0]!
    const bytes = await readFile(join(first.chunks, sub, name))
    bytes[bytes.length >> 1]! ^= 0x40
    await writeFile(join(first.chunks, sub, name), bytes)

    const second = await dirs(first.chunks)
    const p2 = await startGuoce(mountArgs(second))
    const r = await sh(LIST_TREE, [second.mnt])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toBe(expected)
    p2.child.kill('SIGTERM')
    expect(await p2.exited).toEqual({ code: 0, signal: null })
    const s = stats(p2)
    expect(s.store.hits).toBeGreaterThanOrEqual(fetched - 1)
    expect(s.store.corrupt).toBe(1)
    expect(await mountsUnder(work)).toEqual([])
  })

  for (const mode of ['erofs', 'fuse'] as const) {
  it(`--mode ${mode}: --detach returns once mounted; the serving process killed mid-read gives EIO at once; the next mount cleans up and works`, async () => {
    const d = await dirs()
    const det = await runGuoce([...mountArgs(d), '--mode', mode, '--detach', '--json'], { timeoutMs: 30_000 })
    expect(det.code, det.stderr).toBe(0)
    const ready = JSON.parse(det.stdout) as { pid: number, target: string }
    expect(ready.target).toBe(d.mnt)
    try {
      // stop the server, so a cold read is sure to be waiting on it, then kill it
      process.kill(ready.pid, 'SIGSTOP')
      const reading = sh('cat "$1"/data/big > /dev/null', [d.mnt], 30)
      await new Promise(resolve => setTimeout(resolve, 500))
      const killedAt = Date.now()
      process.kill(ready.pid, 'SIGKILL')
      const r = await reading
      expect(r.signal).toBeNull() // not killed by timeout: it returned
      expect(r.code).not.toBe(0)
      expect(r.stderr).toMatch(/Input\/output error|Transport endpoint is not connected|Software caused connection abort/)
      expect(Date.now() - killedAt).toBeLessThan(5_000)
      // later reads fail at once too, never hang
      const after = await sh('cat "$1"/etc/passwd', [d.mnt], 10)
      expect(after.signal).toBeNull()
      expect(after.code).not.toBe(0)

      // a new mount at the same place cleans up the dead one and serves again
      const p = await startGuoce([...mountArgs(d), '--mode', mode])
      const again = await sh(LIST_TREE, [d.mnt])
      expect(again.code, again.stderr).toBe(0)
      expect(again.stdout).toBe(mode === 'erofs' ? expected : expected.replaceAll('|-1000|0:0', '|0|0:0'))
      const u = await runGuoce(['image', 'umount', d.mnt, '--state', d.state])
      expect(u.code, u.stderr).toBe(0)
      expect(await p.exited).toEqual({ code: 0, signal: null })
      expect(await mountsUnder(work)).toEqual([])
      expect(await readdir(d.state)).toEqual(['detached.log'])
    } finally {
      try { process.kill(ready.pid, 'SIGKILL') } catch {}
    }
  })
  }

  it('guoce image pull fills the node chunk store beside a running mount, which then fetches nothing', async () => {
    const d = await dirs()
    const p = await startGuoce(mountArgs(d))
    const pull = await runGuoce(['image', 'pull', `oci:${img.lazy}:v1`, '--chunks', d.chunks, '--json'])
    expect(pull.code, pull.stderr).toBe(0)
    const r1 = JSON.parse(pull.stdout) as { chunks: number, fetched: number, present: number }
    expect(r1.chunks).toBeGreaterThan(40)
    expect(r1.fetched).toBeGreaterThan(0)
    expect(r1.present).toBe(0)
    const r = await sh(LIST_TREE, [d.mnt])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toBe(expected)
    p.child.kill('SIGTERM')
    expect(await p.exited).toEqual({ code: 0, signal: null })
    expect(stats(p).store.fetches).toBe(0)
    const again = await runGuoce(['image', 'pull', `oci:${img.lazy}:v1`, '--chunks', d.chunks, '--json'])
    expect(again.code, again.stderr).toBe(0)
    expect(JSON.parse(again.stdout)).toMatchObject({ chunks: r1.chunks, fetched: 0, present: r1.chunks })
  })

  it('umount of a hung (stopped) serving process kills it and aborts the mount: a blocked reader returns', async () => {
    const d = await dirs()
    const p = await startGuoce(mountArgs(d))
    const pid = p.child.pid!
    process.kill(pid, 'SIGSTOP')
    try {
      const reading = sh('cat "$1"/data/big > /dev/null', [d.mnt], 60)
      await new Promise(resolve => setTimeout(resolve, 500))
      const t0 = Date.now()
      const u = await runGuoce(['image', 'umount', d.mnt, '--state', d.state, '--timeout', '1s'])
      expect(u.code, u.stderr).toBe(0)
      const r = await reading
      expect(r.signal).toBeNull()
      expect(r.code).not.toBe(0)
      expect(Date.now() - t0).toBeLessThan(10_000)
      expect((await p.exited).signal).toBe('SIGKILL')
      expect(await mountsUnder(work)).toEqual([])
      expect(await readdir(d.state)).toEqual([])
    } finally {
      try { process.kill(pid, 'SIGCONT') } catch {}
    }
  })

  it('umount of a dead mount cleans it up; umount of something else fails clearly', async () => {
    const d = await dirs()
    const p = await startGuoce(mountArgs(d))
    p.child.kill('SIGKILL')
    await p.exited
    expect((await mountsUnder(work)).length).toBeGreaterThan(0)
    const u = await runGuoce(['image', 'umount', d.mnt, '--state', d.state])
    expect(u.code, u.stderr).toBe(0)
    expect(await mountsUnder(work)).toEqual([])
    const bad = await runGuoce(['image', 'umount', d.mnt, '--state', d.state])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toMatch(/not a lazy mount/)
  })
})
