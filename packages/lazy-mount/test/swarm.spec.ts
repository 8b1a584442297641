/**
 * `guoce image mount docker://REGISTRY/REPO:TAG --daemon API`: the metadata layers come from a real
 * registry (distribution 2.8), every chunk through the local peer daemon's ranged reader (a real scheduler,
 * seed and daemon on 127.0.0.1), with ranged blob tasks (the default) and with whole-blob ones. With the registry gone, a read no peer can serve fails with EIO in bounded
 * time while what is held still reads; once it is back, concurrent readers (child processes) see exactly
 * the source image.
 */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { pushImage } from '@guoce/image'
import { runGuoce, startCluster, startGuoce, stopAll, until, type Cluster } from '@guoce/testkit'
import { LIST_TREE, buildImage, mountsUnder, sh, startRegistry, sweepMounts, tempDir } from './helpers.js'

describe('lazy mount of a registry image through the swarm', () => {
  const cleanups: Array<() => Promise<void>> = []
  let work = ''
  afterEach(async () => {
    await stopAll()
    const left = work !== '' ? await sweepMounts(work) : []
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
    if (work !== '') await rm(work, { recursive: true, force: true })
    expect(left, 'mounts left behind').toEqual([])
  })

  // ranged blob tasks (the default: only the pieces read are fetched) and whole-blob tasks (--whole-blobs)
  it.each([['ranged blob tasks', []], ['--whole-blobs', ['--whole-blobs']]] as Array<[string, string[]]>)('%s: origin down: an unheld chunk fails with EIO in bounded time, held ones still read; origin back: the image reads exactly', async (_name, extra) => {
    work = await tempDir('swarm')
    const img = await buildImage(work, 64 * 1024)
    const expected = (await sh(LIST_TREE, [img.flat])).stdout
    const reg = await startRegistry(join(work, 'registry'))
    cleanups.push(reg.stop)
    await pushImage(img.lazy, 'v1', `docker://${reg.host}/app:v1`)
    const cluster: Cluster = await startCluster({ daemons: 1, seedArgs: ['--origin-timeout', '2s'], daemonArgs: ['--read-timeout', '3s'] })
    cleanups.push(async () => { await cluster.close() })
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    const state = join(work, 'state')
    const p = await startGuoce(['image', 'mount', `docker://${reg.host}/app:v1`, mnt, '--daemon', cluster.daemons[0]!.api, '--state', state, '--chunks', join(work, 'chunks'), '--fetch-timeout', '4s', ...extra])
    // only part of the image first: /data/multi's blob is read, /data/big's is not
    const part = await sh('cd "$1" && sha256sum data/multi etc/passwd', [mnt])
    expect(part.code, part.stderr).toBe(0)
    expect(part.stdout).toBe((await sh('cd "$1" && sha256sum data/multi etc/passwd', [img.flat])).stdout)

    await reg.stop() // origin down; the daemon and seed hold only what was read (and its pieces)
    const gone = await sh('tail -c 10000 "$1"/data/big > /dev/null', [mnt], 60)
    expect(gone.signal).toBeNull()
    expect(gone.code).not.toBe(0)
    expect(gone.stderr).toMatch(/Input\/output error/)
    // 3 attempts, each ended by the daemon's 3 s read timeout at most; the kernel's retries fail at once
    expect(gone.ms).toBeLessThan(15_000)
    const still = await sh('cd "$1" && sha256sum data/multi etc/passwd', [mnt], 10)
    expect(still.code, still.stderr).toBe(0)
    expect(still.stdout).toBe(part.stdout)

    // the origin comes back: the failed read is not remembered, and the whole image reads right
    const back = await startRegistry(join(work, 'registry'), reg.port)
    cleanups.push(back.stop)
    // the sources find the origin again within their own retry times (a loaded machine stretches them)
    await until(async () => (await sh('tail -c 10000 "$1"/data/big > /dev/null', [mnt], 30)).code === 0, 'a read of the unheld chunk after the origin is back', 60_000, 1_000)
    const readers = await Promise.all([sh(LIST_TREE, [mnt]), sh(LIST_TREE, [mnt]), sh(LIST_TREE, [mnt])])
    for (const r of readers) {
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toBe(expected)
    }

    const u = await runGuoce(['image', 'umount', mnt, '--state', state])
    expect(u.code, u.stderr).toBe(0)
    expect(await p.exited).toEqual({ code: 0, signal: null })
    expect(await mountsUnder(work)).toEqual([])
  })
})
