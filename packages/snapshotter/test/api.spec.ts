/**
 * The snapshots API through gRPC, as containerd's proxy client drives it: containerd's own snapshotter test
 * expectations that apply to a proxy (commit/view/remove ordering, removal with children, Usage, Cleanup,
 * status codes), mounts checked by mounting them, and metadata surviving a restart.
 */
import { mkdir, readFile, rm, stat, writeFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { status } from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startSnapshotter, type RunningSnapshotter } from '../src/index.js'
import { api, codeOf, isMounted, mountAll, tempDir, umount, type Api } from './helpers.js'

describe('snapshots API over gRPC', () => {
  let dir: string
  let root: string
  let running: RunningSnapshotter | undefined
  let c: Api
  const mounted: string[] = []
  const mnt = async (name: string): Promise<string> => { const p = join(dir, 'mnt', name); await mkdir(p, { recursive: true }); return p }
  const mountAt = async (ms: Awaited<ReturnType<Api['prepare']>>['mounts'], target: string): Promise<void> => { await mountAll(ms, target); mounted.push(target) }
  const unmountAt = async (target: string): Promise<void> => { await umount(target); mounted.splice(mounted.indexOf(target), 1) }
  const start = async (opts: { asyncRemove?: boolean } = {}): Promise<void> => {
    running = await startSnapshotter({ root, socket: join(dir, `s-${Date.now()}.sock`), ...opts })
    c = api(running.socket)
  }
  const stop = async (): Promise<void> => { c.close(); await running?.stop(); running = undefined }

  beforeAll(async () => {
    dir = await tempDir('api')
    root = join(dir, 'root')
    await start()
  })
  afterAll(async () => {
    for (const m of mounted.reverse()) await umount(m).catch(async () => { await umount(m).catch(() => {}) })
    await stop().catch(() => {})
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('prepare, commit, view and remove in containerd\'s order, each misuse with its status code', async () => {
    expect((await stat(running!.socket)).mode & 0o777).toBe(0o600) // root (containerd) only: it mounts
    // base layer: an active snapshot without parent is a read-write bind of its fs directory
    const base = await c.prepare({ key: 'ns/1/extract-base', labels: { a: '1' } })
    expect(base.mounts).toHaveLength(1)
    expect(base.mounts[0]!.type).toBe('bind')
    expect(base.mounts[0]!.options).toEqual(['rw', 'rbind'])
    const m1 = await mnt('base')
    await mountAt(base.mounts, m1)
    await writeFile(join(m1, 'a'), 'from base\n')
    await mkdir(join(m1, 'etc'))
    await writeFile(join(m1, 'etc', 'gone'), 'deleted above\n')
    await unmountAt(m1)
    expect(await codeOf(c.prepare({ key: 'ns/1/extract-base' }))).toBe(status.ALREADY_EXISTS)
    expect((await c.mounts({ key: 'ns/1/extract-base' })).mounts).toEqual(base.mounts)

    await c.commit({ name: 'ns/1/base', key: 'ns/1/extract-base', labels: { layer: 'base' } })
    expect(await codeOf(c.stat({ key: 'ns/1/extract-base' }))).toBe(status.NOT_FOUND) // the key became the name
    expect(await codeOf(c.commit({ name: 'ns/1/other', key: 'ns/1/extract-base' }))).toBe(status.NOT_FOUND)
    expect(await codeOf(c.mounts({ key: 'ns/1/base' }))).toBe(status.FAILED_PRECONDITION) // committed: no mounts
    const sb = (await c.stat({ key: 'ns/1/base' })).info
    expect(sb).toMatchObject({ name: 'ns/1/base', parent: '', kind: 'COMMITTED', labels: { layer: 'base' } })

    // second layer on the base: overlay with upperdir, workdir and the base as lowerdir
    const l2 = await c.prepare({ key: 'ns/1/extract-l2', parent: 'ns/1/base' })
    expect(l2.mounts[0]!.type).toBe('overlay')
    const opts = Object.fromEntries(l2.mounts[0]!.options.map(o => o.split('=') as [string, string]))
    expect(opts.lowerdir).toMatch(/\/snapshots\/\d+\/fs$/)
    expect(opts.upperdir).toMatch(/\/snapshots\/\d+\/fs$/)
    expect(opts.workdir).toMatch(/\/snapshots\/\d+\/work$/)
    const m2 = await mnt('l2')
    await mountAt(l2.mounts, m2)
    expect(await readFile(join(m2, 'a'), 'utf8')).toBe('from base\n')
    await writeFile(join(m2, 'b'), 'from l2\n')
    await rm(join(m2, 'etc', 'gone'))
    await unmountAt(m2)
    expect(await codeOf(c.commit({ name: 'ns/1/base', key: 'ns/1/extract-l2' }))).toBe(status.ALREADY_EXISTS)
    await c.commit({ name: 'ns/1/l2', key: 'ns/1/extract-l2' })

    // a view of two layers: read-only overlay of both, nearest first; a view of one layer: read-only bind
    const v2 = await c.view({ key: 'ns/1/view-l2', parent: 'ns/1/l2' })
    expect(v2.mounts[0]!.type).toBe('overlay')
    const lower = v2.mounts[0]!.options.find(o => o.startsWith('lowerdir='))!.slice(9).split(':')
    expect(lower).toHaveLength(2)
    expect(v2.mounts[0]!.options.some(o => o.startsWith('upperdir='))).toBe(false)
    const mv = await mnt('v2')
    await mountAt(v2.mounts, mv)
    expect(await readFile(join(mv, 'a'), 'utf8')).toBe('from base\n')
    expect(await readFile(join(mv, 'b'), 'utf8')).toBe('from l2\n')
    await expect(stat(join(mv, 'etc', 'gone'))).rejects.toMatchObject({ code: 'ENOENT' }) // deleted above: a whiteout
    await expect(writeFile(join(mv, 'c'), 'x')).rejects.toMatchObject({ code: 'EROFS' })
    await unmountAt(mv)
    const v1 = await c.view({ key: 'ns/1/view-base', parent: 'ns/1/base' })
    expect(v1.mounts).toEqual([{ type: 'bind', source: expect.stringMatching(/\/snapshots\/\d+\/fs$/), target: '', options: ['ro', 'rbind'] }])
    expect((await c.stat({ key: 'ns/1/view-base' })).info.kind).toBe('VIEW')
    expect(await codeOf(c.commit({ name: 'ns/1/x', key: 'ns/1/view-base' }))).toBe(status.FAILED_PRECONDITION) // only active snapshots commit

    // CRI's remote-layer labels with no RemoteLayerMounter: an ordinary snapshot, recorded under its key
    const cri = { 'containerd.io/snapshot.ref': `sha256:${'aa'.repeat(32)}`, 'containerd.io/snapshot/cri.image-ref': 'r/app:v1', 'containerd.io/snapshot/cri.layer-digest': `sha256:${'bb'.repeat(32)}` }
    expect((await c.prepare({ key: 'ns/1/extract-cri', labels: cri })).mounts[0]!.type).toBe('bind')
    expect((await c.stat({ key: 'ns/1/extract-cri' })).info).toMatchObject({ kind: 'ACTIVE', labels: cri })
    expect(await codeOf(c.stat({ key: cri['containerd.io/snapshot.ref'] }))).toBe(status.NOT_FOUND)
    await c.remove({ key: 'ns/1/extract-cri' })

    // bad requests
    expect(await codeOf(c.prepare({ key: 'ns/1/orphan', parent: 'ns/1/nope' }))).toBe(status.NOT_FOUND)
    await c.prepare({ key: 'ns/1/active' })
    expect(await codeOf(c.prepare({ key: 'ns/1/on-active', parent: 'ns/1/active' }))).toBe(status.INVALID_ARGUMENT) // parent not committed
    expect(await codeOf(c.prepare({ key: '' }))).toBe(status.INVALID_ARGUMENT)
    expect(await codeOf(c.prepare({ key: 'ns/1/big-label', labels: { k: 'v'.repeat(5000) } }))).toBe(status.INVALID_ARGUMENT)
    expect(await codeOf(c.remove({ key: 'ns/1/nope' }))).toBe(status.NOT_FOUND)
    expect(await codeOf(c.stat({ key: 'ns/1/nope' }))).toBe(status.NOT_FOUND)
    expect(await codeOf(c.usage({ key: 'ns/1/nope' }))).toBe(status.NOT_FOUND)
    expect(await codeOf(c.update({ info: { name: 'ns/1/nope', labels: {} } }))).toBe(status.NOT_FOUND)

    // removal in dependency order: a snapshot with children (a layer or a view on it) cannot go
    expect(await codeOf(c.remove({ key: 'ns/1/base' }))).toBe(status.FAILED_PRECONDITION)
    expect(await codeOf(c.remove({ key: 'ns/1/l2' }))).toBe(status.FAILED_PRECONDITION)
    await c.remove({ key: 'ns/1/view-l2' })
    await c.remove({ key: 'ns/1/l2' })
    expect(await codeOf(c.remove({ key: 'ns/1/base' }))).toBe(status.FAILED_PRECONDITION) // view-base still on it
    await c.remove({ key: 'ns/1/view-base' })
    await c.remove({ key: 'ns/1/base' })
    await c.remove({ key: 'ns/1/active' })
    expect(await codeOf(c.stat({ key: 'ns/1/base' }))).toBe(status.NOT_FOUND)
    expect(await c.list()).toEqual([])
    expect(await readdir(join(root, 'snapshots'))).toEqual([]) // synchronous removal deletes the directories
  })

  it('Usage reports the bytes and inodes of an active snapshot, and keeps them at commit; a view uses none', async () => {
    const r = await c.prepare({ key: 'u/active' })
    const m = await mnt('u')
    await mountAt(r.mounts, m)
    await writeFile(join(m, 'one-mib'), Buffer.alloc(1 << 20, 7))
    await mkdir(join(m, 'd'))
    await writeFile(join(m, 'd', 'small'), 'x')
    await unmountAt(m)
    const u = await c.usage({ key: 'u/active' })
    expect(u.inodes).toBe(4) // fs, one-mib, d, d/small
    expect(u.size).toBeGreaterThanOrEqual((1 << 20) + 4096)
    expect(u.size).toBeLessThan((1 << 20) + 64 * 1024)
    await c.commit({ name: 'u/layer', key: 'u/active' })
    expect(await c.usage({ key: 'u/layer' })).toEqual(u)
    await c.view({ key: 'u/view', parent: 'u/layer' })
    expect(await c.usage({ key: 'u/view' })).toEqual({ size: 0, inodes: 0 })
    await c.remove({ key: 'u/view' })
    await c.remove({ key: 'u/layer' })
  })

  it('Stat, Update and List with containerd filters; labels and times kept', async () => {
    await c.prepare({ key: 'f/a', labels: { team: 'x', 'containerd.io/gc.root': 'now' } })
    await c.commit({ name: 'f/base', key: 'f/a', labels: { team: 'x' } })
    await c.prepare({ key: 'f/b', parent: 'f/base', labels: { team: 'y' } })
    const before = (await c.stat({ key: 'f/b' })).info
    await new Promise(resolve => setTimeout(resolve, 20))
    const up = (await c.update({ info: { name: 'f/b', labels: { extra: '1', team: 'ignored' } }, updateMask: { paths: ['labels.extra'] } })).info
    expect(up.labels).toEqual({ team: 'y', extra: '1' })
    const t = (x: { seconds: number, nanos: number } | null): number => x!.seconds * 1000 + x!.nanos / 1e6
    expect(t(up.updatedAt)).toBeGreaterThan(t(before.updatedAt))
    expect(t(up.createdAt)).toBe(t(before.createdAt))
    expect((await c.update({ info: { name: 'f/b', labels: {} }, updateMask: { paths: ['labels.team'] } })).info.labels).toEqual({ extra: '1' })
    expect(await codeOf(c.update({ info: { name: 'f/b', labels: {} }, updateMask: { paths: ['parent'] } }))).toBe(status.INVALID_ARGUMENT)
    expect((await c.update({ info: { name: 'f/b', labels: { z: '9' } } })).info.labels).toEqual({ z: '9' }) // no mask: all labels

    const names = async (f: string[]): Promise<string[]> => (await c.list(f)).map(i => i.name).filter(n => n.startsWith('f/')).sort()
    expect(await names([])).toEqual(['f/b', 'f/base'])
    expect(await names(['kind==committed'])).toEqual(['f/base'])
    expect(await names(['parent==f/base'])).toEqual(['f/b'])
    expect(await names(['labels.team==x'])).toEqual(['f/base'])
    expect(await names(['labels."z"'])).toEqual(['f/b'])
    expect(await names(['labels.team==x', 'labels.z==9'])).toEqual(['f/b', 'f/base']) // any filter
    expect(await names(['kind==active,labels.z==9'])).toEqual(['f/b']) // every selector
    expect(await names(['name~=^f/b.s'])).toEqual(['f/base'])
    expect(await codeOf(c.list(['bogus==1']))).toBe(status.INVALID_ARGUMENT)
    expect(await codeOf(c.list(['name~=('] ))).toBe(status.INVALID_ARGUMENT)
    expect(await codeOf(c.list(['x'.repeat(5000)]))).toBe(status.INVALID_ARGUMENT)
    await c.remove({ key: 'f/b' })
    await c.remove({ key: 'f/base' })
  })

  it('a restart loses nothing: snapshots, parents, labels, kinds, times and mounts come back', async () => {
    await c.prepare({ key: 'r/a', labels: { l: '1' } })
    const m = await mnt('r')
    await mountAt((await c.mounts({ key: 'r/a' })).mounts, m)
    await writeFile(join(m, 'kept'), 'kept\n')
    await unmountAt(m)
    await c.commit({ name: 'r/base', key: 'r/a', labels: { l: '2' } })
    await c.prepare({ key: 'r/top', parent: 'r/base' })
    await c.view({ key: 'r/view', parent: 'r/base' })
    const infos = await c.list()
    const mounts = (await c.mounts({ key: 'r/top' })).mounts
    const usage = await c.usage({ key: 'r/base' })
    await stop()
    await start()
    expect(await c.list()).toEqual(infos)
    expect((await c.mounts({ key: 'r/top' })).mounts).toEqual(mounts)
    expect(await c.usage({ key: 'r/base' })).toEqual(usage)
    await mountAt((await c.mounts({ key: 'r/view' })).mounts, m)
    expect(await readFile(join(m, 'kept'), 'utf8')).toBe('kept\n')
    await unmountAt(m)
    expect(await codeOf(c.remove({ key: 'r/base' }))).toBe(status.FAILED_PRECONDITION)
    for (const k of ['r/top', 'r/view', 'r/base']) await c.remove({ key: k })
    // the metadata file is replaced whole, never left as a temp file
    expect((await readdir(root)).sort()).toEqual(['metadata.json', 'snapshots'])
  })

  it('a damaged metadata file stops the start with an error naming it, and is left as it was', async () => {
    const bad = join(dir, 'bad-root')
    await mkdir(bad)
    await writeFile(join(bad, 'metadata.json'), '{"version":1,"nextId":3,"snapsh')
    await expect(startSnapshotter({ root: bad, socket: join(dir, 'bad.sock') })).rejects.toThrow(`${join(bad, 'metadata.json')}: not valid JSON`)
    expect(await readFile(join(bad, 'metadata.json'), 'utf8')).toBe('{"version":1,"nextId":3,"snapsh')
    await writeFile(join(bad, 'metadata.json'), '{"version":2}')
    await expect(startSnapshotter({ root: bad, socket: join(dir, 'bad.sock') })).rejects.toThrow('not a snapshotter metadata file of version 1')
  })

  it('Cleanup frees the directories nothing references and keeps the rest', async () => {
    await stop()
    await start({ asyncRemove: true })
    await c.prepare({ key: 'c/keep' })
    await c.prepare({ key: 'c/drop' })
    const before = await readdir(join(root, 'snapshots'))
    expect(before).toHaveLength(2)
    await c.remove({ key: 'c/drop' })
    expect(await readdir(join(root, 'snapshots'))).toHaveLength(2) // async removal: the directory waits for Cleanup
    // a directory left by a crash between mkdir and the metadata write
    await mkdir(join(root, 'snapshots', '999', 'fs'), { recursive: true })
    await c.cleanup({})
    const after = await readdir(join(root, 'snapshots'))
    expect(after).toHaveLength(1)
    const keepFs = (await c.mounts({ key: 'c/keep' })).mounts[0]!.source
    expect(keepFs).toBe(join(root, 'snapshots', after[0]!, 'fs'))
    expect(await isMounted(keepFs)).toBe(false)
    await c.remove({ key: 'c/keep' })
    await c.cleanup({})
    expect(await readdir(join(root, 'snapshots'))).toEqual([])
  })
})
