/**
 * Must hold (issue 4): the converted image stacks — the overlayfs mount of all converted layers equals the
 * flattened original image (layers extracted in order by GNU tar, OCI whiteouts applied) — and chunks of
 * earlier layers are referenced, not stored again.
 */
import { createReadStream } from 'node:fs'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer, createChunkDict, type LayerResult } from '../src/index.js'
import { makeRootfs, tarDir } from './fixtures.js'
import { cleanup, mountErofs, nativeMount, requireTools, run, snapshot, tempDir, umount, views } from './helpers.js'

const LAYER2 = String.raw`
set -eu
R="$1"; BASE="$2"
mkdir -p "$R/etc" "$R/data" "$R/bigdir" "$R/usr/share"
printf 'root:x:0:0:root:/root:/bin/ash\nuser:x:1000:1000::/home/user:/bin/sh\n' > "$R/etc/passwd"
: > "$R/data/.wh.multi-copy"
: > "$R/.wh.deep"
: > "$R/bigdir/.wh..wh..opq"; printf 'only this one\n' > "$R/bigdir/only"
cp "$BASE/data/multi" "$R/usr/share/multi-again"
chmod 0700 "$R/data"
`
const LAYER3 = String.raw`
set -eu
R="$1"
mkdir -p "$R/data" "$R/usr/share"
: > "$R/usr/share/.wh.multi-again"
ln -s /etc/passwd "$R/data/multi-copy"
printf 'new in layer 3\n' > "$R/data/newfile"
`

/** Applies OCI layers in order the way an image is flattened: whiteouts first, then GNU tar extraction. */
async function flatten (tars: string[], dest: string): Promise<void> {
  for (const tar of tars) {
    const { stdout } = await run('tar', ['-tf', tar], { maxBuffer: 64 * 1024 * 1024 })
    for (const member of stdout.split('\n').filter(Boolean)) {
      const clean = member.replace(/^\.\//, '').replace(/\/$/, '')
      const slash = clean.lastIndexOf('/')
      const dir = slash === -1 ? '' : clean.slice(0, slash)
      const base = clean.slice(slash + 1)
      if (member.endsWith('/') && base !== '') {
        // a directory in a later layer carries all of its attributes (as overlayfs shows the upper dir);
        // GNU tar would keep xattrs the earlier layer set on it, so clear them first
        const d = join(dest, clean)
        const { stdout: attrs } = await run('getfattr', ['-h', '-m', '-', '--absolute-names', d]).catch(() => ({ stdout: '' }))
        for (const name of attrs.split('\n').filter(l => l !== '' && !l.startsWith('#'))) await run('setfattr', ['-h', '-x', name, d])
      }
      if (base === '.wh..wh..opq') {
        const d = join(dest, dir)
        for (const n of await readdir(d).catch(() => [])) await rm(join(d, n), { recursive: true, force: true })
      } else if (base.startsWith('.wh.')) {
        await rm(join(dest, dir, base.slice(4)), { recursive: true, force: true })
      }
    }
    await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '--exclude=.wh.*', '-xpf', tar, '-C', dest])
  }
}

describe('converted layers stack with overlayfs', () => {
  let work: string
  const mounts: string[] = []

  beforeAll(async () => {
    await requireTools('tar', 'gzip', 'fsck.erofs', 'getfattr')
    work = await tempDir('overlay')
  })
  afterAll(async () => {
    for (const m of mounts.reverse()) await umount(m).catch(() => {})
    if (work !== undefined) await cleanup(work)
  })

  it('overlay of the converted layers equals the flattened image; earlier chunks are not stored again', async () => {
    const l1 = join(work, 'l1'); const l2 = join(work, 'l2'); const l3 = join(work, 'l3')
    for (const d of [l1, l2, l3]) await mkdir(d)
    await makeRootfs(l1, { whiteouts: false })
    await run('sh', ['-c', LAYER2, 'sh', l2, l1])
    await run('sh', ['-c', LAYER3, 'sh', l3])
    const tars = [join(work, 'l1.tar'), join(work, 'l2.tar'), join(work, 'l3.tar')]
    await tarDir(l1, tars[0]!)
    await tarDir(l2, tars[1]!)
    await tarDir(l3, tars[2]!)
    await run('gzip', [tars[1]!])

    const dict = createChunkDict()
    const results: LayerResult[] = []
    const sources = [tars[0]!, `${tars[1]!}.gz`, tars[2]!]
    for (let i = 0; i < 3; i++) {
      results.push(await convertLayer(createReadStream(sources[i]!), {
        metaPath: join(work, `l${i + 1}.erofs`), blobPath: join(work, `l${i + 1}.blob`), chunkSize: 64 * 1024, chunkDict: dict
      }))
    }
    const [r1, r2, r3] = results as [LayerResult, LayerResult, LayerResult]
    // layer 2's copy of data/multi is stored by layer 1: referenced through layer 1's blob
    expect(r2.stats.dedupFromDict).toBeGreaterThan(0)
    expect(r2.devices.map(d => d.tag)).toEqual([r1.blobDigest, r2.blobDigest])
    expect(r3.devices.map(d => d.tag)).toEqual([r3.blobDigest])
    expect(dict.blobs.map(b => b.digest)).toEqual([r1.blobDigest, r2.blobDigest, r3.blobDigest])

    const blobFor = (digest: string): string => join(work, `l${results.findIndex(r => r.blobDigest === digest) + 1}.blob`)
    const layerMounts: string[] = []
    for (let i = 0; i < 3; i++) {
      const meta = join(work, `l${i + 1}.erofs`)
      const blobs = results[i]!.devices.map(d => blobFor(d.tag))
      const devs = await views(meta, blobs, join(work, `views${i + 1}`))
      await run('fsck.erofs', [...devs.map(b => `--device=${b}`), meta])
      await checkImage(meta, { blobs })
      const mnt = join(work, `m${i + 1}`)
      await mkdir(mnt)
      await mountErofs(meta, devs, mnt)
      mounts.push(mnt)
      layerMounts.push(mnt)
    }
    const merged = join(work, 'merged')
    await mkdir(merged)
    const m = await nativeMount()
    await m.mount('overlay', merged, 'overlay', m.constants.MS_RDONLY, `lowerdir=${[...layerMounts].reverse().join(':')}`)
    mounts.push(merged)

    const flat = join(work, 'flat')
    await mkdir(flat)
    await flatten(sources, flat)

    const a = await snapshot(merged)
    const e = await snapshot(flat)
    expect(Object.keys(a.entries).sort()).toEqual(Object.keys(e.entries).sort())
    for (const [p, x] of Object.entries(e.entries)) expect({ path: p, ...a.entries[p] }).toEqual({ path: p, ...x })
    // spot checks of the layering itself
    expect(a.entries['data/multi-copy']!.type).toBe('symlink')
    expect(a.entries['usr/share/multi-again']).toBeUndefined()
    expect(a.entries.deep).toBeUndefined()
    expect(Object.keys(a.entries).filter(p => p.startsWith('bigdir/'))).toEqual(['bigdir/only'])
  })
})
