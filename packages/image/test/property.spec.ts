/**
 * Property (issue 4): any generated tree round-trips — tar -> convertLayer -> kernel mount shows exactly the
 * generated names, kinds, bytes, modes, owners, times (ns), xattrs, link targets, device numbers and hardlinks.
 */
import { createHash } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkImage, convertLayer } from '../src/index.js'
import { cleanup, makeTar, mountErofs, requireTools, run, snapshot, tempDir, umount, views, type EntrySnapshot, type TarMember, type TreeSnapshot } from './helpers.js'

const CHUNK = 4096

type Kind = 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'hardlink'

interface GenEntry {
  parent: number
  name: string
  kind: Kind
  mode: number
  uid: number
  gid: number
  mtime: number
  nsec: number
  xattrs: Record<string, Uint8Array>
  content: Buffer
  target: string
  linkTo: number
  major: number
  minor: number
}

const nameArb = fc.oneof(
  fc.stringMatching(/^[a-z0-9_-]{1,10}$/),
  fc.constantFrom('ünï', '名前', 'with space', 'x'.repeat(255), '-leading-dash', '!bang', 'UPPER', '.hidden')
)

/** File contents that exercise holes, in-file dedup and partial last chunks. */
const contentArb = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map(u => Buffer.from(u)),
  fc.record({
    blocks: fc.array(fc.constantFrom('zero', 'a', 'b', 'rand'), { maxLength: 5 }),
    tail: fc.nat({ max: 5000 }),
    seed: fc.nat()
  }).map(({ blocks, tail, seed }) => {
    const parts = blocks.map((b, i) => b === 'zero'
      ? Buffer.alloc(CHUNK)
      : b === 'rand' ? createHash('sha512').update(`${seed}:${i}`).digest().subarray(0, 64).toString('hex').repeat(64).slice(0, CHUNK) : b.repeat(CHUNK))
      .map(p => typeof p === 'string' ? Buffer.from(p) : p)
    return Buffer.concat([...parts, Buffer.alloc(tail, 0x61 + (seed % 26))])
  })
)

const entryArb: fc.Arbitrary<GenEntry> = fc.record({
  parent: fc.nat(),
  name: nameArb,
  kind: fc.constantFrom<Kind>('file', 'file', 'dir', 'dir', 'symlink', 'fifo', 'char', 'block', 'hardlink'),
  mode: fc.integer({ min: 0, max: 0o7777 }),
  uid: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 100_000 })),
  gid: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 100_000 })),
  mtime: fc.oneof(fc.constant(1_700_000_000), fc.integer({ min: 0, max: 2 ** 34 })),
  nsec: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 999_999_999 })),
  xattrs: fc.dictionary(fc.stringMatching(/^(user|trusted)\.[a-z]{1,12}$/), fc.uint8Array({ minLength: 1, maxLength: 80 }), { maxKeys: 3 }),
  content: contentArb,
  target: fc.stringMatching(/^[a-z./]{1,60}$/),
  linkTo: fc.nat(),
  major: fc.integer({ min: 0, max: 4095 }),
  minor: fc.integer({ min: 0, max: 1_000_000 })
})

interface Built { members: TarMember[], expected: TreeSnapshot }

function hex (u: Uint8Array): string { return '0x' + Buffer.from(u).toString('hex') }

/** Turns generated entries into tar members and the tree a mount must show. */
function build (gen: GenEntry[]): Built {
  const dirs: string[] = ['']
  const files: string[] = []
  const taken = new Set<string>([''])
  const members: TarMember[] = []
  const entries: Record<string, EntrySnapshot> = { '.': { type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: '0', xattrs: {} } }
  const inodeOf = new Map<string, string>()
  for (const g0 of gen) {
    // Linux allows user.* xattrs only on regular files and directories
    const g = g0.kind === 'file' || g0.kind === 'dir' ? g0 : { ...g0, xattrs: Object.fromEntries(Object.entries(g0.xattrs).filter(([k]) => !k.startsWith('user.'))) }
    const parent = dirs[g.parent % dirs.length]!
    const utf8 = Buffer.from(g.name, 'utf8').toString('latin1')
    const path = parent === '' ? utf8 : `${parent}/${utf8}`
    if (taken.has(path) || Buffer.byteLength(path, 'latin1') > 3000) continue
    const meta = {
      type: g.kind as string,
      mode: g.kind === 'symlink' ? 0o777 : g.mode,
      uid: g.uid,
      gid: g.gid,
      mtime: (BigInt(g.mtime) * 1_000_000_000n + BigInt(g.nsec)).toString(),
      xattrs: Object.fromEntries(Object.entries(g.xattrs).map(([k, v]) => [k, hex(v)]))
    }
    const pax: Record<string, string | Buffer> = {
      path: Buffer.from(path, 'latin1'),
      mtime: `${g.mtime}.${String(g.nsec).padStart(9, '0')}`,
      uid: String(g.uid),
      gid: String(g.gid)
    }
    for (const [k, v] of Object.entries(g.xattrs)) pax[`SCHILY.xattr.${k}`] = Buffer.from(v)
    const base = { name: 'placeholder', mode: g.mode, pax }
    switch (g.kind) {
      case 'dir':
        members.push({ ...base, type: '5' })
        dirs.push(path)
        entries[path] = meta
        break
      case 'file':
        members.push({ ...base, type: '0', data: g.content })
        files.push(path)
        entries[path] = { ...meta, size: g.content.length, sha256: createHash('sha256').update(g.content).digest('hex'), nlink: 1 }
        inodeOf.set(path, path)
        break
      case 'symlink':
        members.push({ ...base, type: '2', pax: { ...pax, linkpath: g.target } })
        entries[path] = { ...meta, target: g.target }
        break
      case 'fifo':
        members.push({ ...base, type: '6' })
        entries[path] = meta
        break
      case 'char': case 'block':
        members.push({ ...base, type: g.kind === 'char' ? '3' : '4', pax: { ...pax, 'SCHILY.devmajor': String(g.major), 'SCHILY.devminor': String(g.minor) } })
        entries[path] = { ...meta, rdev: `${g.major}:${g.minor}` }
        break
      case 'hardlink': {
        if (files.length === 0) continue
        const target = files[g.linkTo % files.length]!
        members.push({ name: 'placeholder', type: '1', pax: { path: Buffer.from(path, 'latin1'), linkpath: Buffer.from(target, 'latin1') } })
        const first = inodeOf.get(target)!
        inodeOf.set(path, first)
        entries[path] = { ...entries[first]! }
        break
      }
    }
    taken.add(path)
  }
  // nlink and hardlink groups
  const groups = new Map<string, string[]>()
  for (const [p, first] of inodeOf) groups.set(first, [...(groups.get(first) ?? []), p])
  for (const g of groups.values()) for (const p of g) entries[p] = { ...entries[p]!, nlink: g.length }
  const links = [...groups.values()].filter(g => g.length > 1).map(g => g.sort()).sort((a, b) => a[0]! < b[0]! ? -1 : 1)
  return { members, expected: { entries, links } }
}

describe('property: generated trees round-trip through tar, conversion and the kernel', () => {
  let work: string
  let n = 0
  beforeAll(async () => {
    await requireTools('getfattr', 'fsck.erofs')
    work = await tempDir('property')
  })
  afterAll(async () => { if (work !== undefined) await cleanup(work) })

  it('any tree', async () => {
    await fc.assert(fc.asyncProperty(fc.array(entryArb, { maxLength: 40 }), async (gen) => {
      const { members, expected } = build(gen)
      const dir = join(work, `run-${n++}`)
      const mnt = join(dir, 'mnt')
      await mkdir(mnt, { recursive: true })
      try {
        const meta = join(dir, 'meta.erofs')
        const blob = join(dir, 'data.blob')
        const r = await convertLayer(Readable.from([makeTar(members)]), { metaPath: meta, blobPath: blob, chunkSize: CHUNK })
        const blobs = r.blobDigest === undefined ? [] : [blob]
        const devs = await views(meta, blobs, join(dir, 'views'))
        await run('fsck.erofs', [...devs.map(b => `--device=${b}`), meta])
        await checkImage(meta, { blobs })
        await mountErofs(meta, devs, mnt)
        try {
          const actual = await snapshot(mnt)
          expect(actual).toEqual(expected)
        } finally {
          await umount(mnt)
        }
      } finally {
        await cleanup(dir)
      }
    }), { numRuns: Number(process.env.GUOCE_PROPERTY_RUNS ?? 40) })
  })
})
