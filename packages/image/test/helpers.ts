/**
 * Test helpers: required tools, mounting through the native addon, tree snapshots for comparison,
 * and a small tar writer for crafted (and hostile) layers.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { existsSync } from 'node:fs'
import { promisify } from 'node:util'
import { pathToFileURL } from 'node:url'
import { materializeLayers } from '../src/index.js'

export const run = promisify(execFile)

/** Fails (never skips) when a tool the tests rely on is missing. */
export async function requireTools (...tools: string[]): Promise<void> {
  for (const t of tools) {
    try {
      await run('sh', ['-c', `command -v ${t}`])
    } catch {
      throw new Error(`required tool ${t} is not installed (see packages/image README/report: Debian packages erofs-utils tar attr busybox-static zstd gzip)`)
    }
  }
}

export async function tempDir (prefix: string): Promise<string> {
  return await mkdtemp(join(tmpdir(), `guoce-image-${prefix}-`))
}

interface MountModule {
  mount: (source: string | null, target: string, fstype: string | null, flags?: number, data?: string | null) => Promise<void>
  umount2: (target: string, flags?: number) => Promise<void>
  constants: { MS_RDONLY: number, MS_BIND: number, MNT_DETACH: number }
}

let mountModule: MountModule | undefined
/** The native addon (native/mount, built by `npm run build -w @guoce/native-mount`). */
export async function nativeMount (): Promise<MountModule> {
  if (mountModule === undefined) {
    let dir = import.meta.dirname
    while (!existsSync(join(dir, 'native/mount/package.json'))) {
      if (dirname(dir) === dir) throw new Error('native/mount not found above ' + import.meta.dirname)
      dir = dirname(dir)
    }
    const url = pathToFileURL(join(dir, 'native/mount/dist/src/index.js')).href
    mountModule = await import(url) as MountModule
  }
  return mountModule
}

/** Mounts an EROFS metadata image file-backed with its blobs as `device=` options, read-only. */
export async function mountErofs (meta: string, blobs: string[], dir: string): Promise<void> {
  const m = await nativeMount()
  const data = blobs.map(b => `device=${b}`).join(',')
  await m.mount(meta, dir, 'erofs', m.constants.MS_RDONLY, data === '' ? null : data)
}

/**
 * What the kernel and fsck.erofs take as `device=`: each stored blob expanded (and verified) into its
 * uncompressed view under `dir` (v2), or the blob itself (v1).
 */
export async function views (meta: string, blobs: string[], dir: string): Promise<string[]> {
  return (await materializeLayers([{ meta, blobs }], dir))[0]!
}

export async function umount (dir: string): Promise<void> {
  const m = await nativeMount()
  await m.umount2(dir, m.constants.MNT_DETACH)
}

export interface EntrySnapshot {
  type: string
  mode: number
  uid: number
  gid: number
  mtime: string
  size?: number
  sha256?: string
  target?: string
  rdev?: string
  nlink?: number
  xattrs: Record<string, string>
}

export interface TreeSnapshot {
  entries: Record<string, EntrySnapshot>
  /** Groups of paths sharing an inode (hardlinks), sorted. */
  links: string[][]
}

function typeOf (s: import('node:fs').BigIntStats): string {
  if (s.isFile()) return 'file'
  if (s.isDirectory()) return 'dir'
  if (s.isSymbolicLink()) return 'symlink'
  if (s.isCharacterDevice()) return 'char'
  if (s.isBlockDevice()) return 'block'
  if (s.isFIFO()) return 'fifo'
  if (s.isSocket()) return 'socket'
  return 'unknown'
}

/** All xattrs of every path under root (getfattr, hex values), keyed by relative path. */
async function xattrsOf (root: string): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>()
  const { stdout } = await run('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], { maxBuffer: 256 * 1024 * 1024, encoding: 'buffer' })
    .catch((err: { stdout?: Buffer }) => ({ stdout: err.stdout ?? Buffer.alloc(0) }))
  let cur: Record<string, string> | undefined
  for (const line of stdout.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      let p = line.slice('# file: '.length)
      // getfattr escapes some bytes as \ooo
      p = p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
      const rel = p === root ? '.' : p.slice(root.length + 1)
      cur = {}
      out.set(rel, cur)
    } else if (line.includes('=') && cur !== undefined) {
      const i = line.indexOf('=')
      cur[line.slice(0, i)] = line.slice(i + 1)
    }
  }
  return out
}

/**
 * Snapshot of a tree: per path (byte string, relative) type, mode, owner, mtime (ns), content digest,
 * link target, rdev, xattrs; plus hardlink groups.
 */
export async function snapshot (root: string, opts: { mtimes?: boolean, dirMtimes?: boolean } = {}): Promise<TreeSnapshot> {
  const entries: Record<string, EntrySnapshot> = {}
  const inodes = new Map<string, string[]>()
  const xattrs = await xattrsOf(root)
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '.' ? root : join(root, rel)
    const s = await lstat(Buffer.from(abs, 'latin1'), { bigint: true })
    const type = typeOf(s)
    const e: EntrySnapshot = {
      type,
      mode: Number(s.mode & 0o7777n),
      uid: Number(s.uid),
      gid: Number(s.gid),
      mtime: (opts.mtimes ?? true) && (type !== 'dir' || (opts.dirMtimes ?? true)) ? s.mtimeNs.toString() : '-',
      xattrs: xattrs.get(rel) ?? {}
    }
    if (type === 'file') {
      const data = await readFile(Buffer.from(abs, 'latin1'))
      e.size = data.length
      e.sha256 = createHash('sha256').update(data).digest('hex')
      e.nlink = Number(s.nlink)
    }
    if (type === 'symlink') e.target = (await readlink(Buffer.from(abs, 'latin1'), { encoding: 'buffer' })).toString('latin1')
    if (type === 'char' || type === 'block') e.rdev = `${Number(s.rdev >> 8n) & 0xfff}:${Number((s.rdev & 0xffn) | ((s.rdev >> 12n) & 0xfff00n))}`
    entries[rel] = e
    if (type !== 'dir') {
      const k = `${s.dev}:${s.ino}`
      inodes.set(k, [...(inodes.get(k) ?? []), rel])
    } else {
      const names = await readdir(Buffer.from(abs, 'latin1'), { encoding: 'buffer' })
      for (const n of names) await walk(rel === '.' ? n.toString('latin1') : `${rel}/${n.toString('latin1')}`)
    }
  }
  await walk('.')
  const links = [...inodes.values()].filter(g => g.length > 1).map(g => g.sort()).sort((a, b) => a[0]! < b[0]! ? -1 : 1)
  return { entries, links }
}

/**
 * What an OCI layer extracted by GNU tar looks like once its whiteouts are in overlay form:
 * `.wh.X` (a regular file) becomes char 0/0 `X`; `.wh..wh..opq` becomes trusted.overlay.opaque=y on its dir.
 */
export function overlayForm (snap: TreeSnapshot): TreeSnapshot {
  const entries: Record<string, EntrySnapshot> = {}
  const opaque: string[] = []
  for (const [p, e] of Object.entries(snap.entries)) {
    const slash = p.lastIndexOf('/')
    const dir = slash === -1 ? '.' : p.slice(0, slash)
    const base = p.slice(slash + 1)
    if (base === '.wh..wh..opq') { opaque.push(dir); continue }
    if (base.startsWith('.wh..wh.')) continue
    if (base.startsWith('.wh.')) {
      const name = base.slice(4)
      entries[dir === '.' ? name : `${dir}/${name}`] = { type: 'char', mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, rdev: '0:0', xattrs: e.xattrs }
      continue
    }
    entries[p] = e
  }
  for (const d of opaque) {
    const e = entries[d]
    if (e !== undefined) e.xattrs = { ...e.xattrs, 'trusted.overlay.opaque': '0x79' }
  }
  const links = snap.links.map(g => g.filter(p => !p.split('/').pop()!.startsWith('.wh.'))).filter(g => g.length > 1)
  return { entries, links }
}

export async function cleanup (...paths: string[]): Promise<void> {
  for (const p of paths) await rm(p, { recursive: true, force: true })
}

// ---- a small tar writer for crafted layers ----

export interface TarMember {
  name: string
  type?: '0' | '1' | '2' | '3' | '4' | '5' | '6' | string
  data?: Buffer
  /** Size written in the header (default data.length): lets a test lie. */
  size?: number
  mode?: number
  uid?: number
  gid?: number
  mtime?: number
  linkname?: string
  devmajor?: number
  devminor?: number
  /** pax records for an 'x' header before this member. */
  pax?: Record<string, string | Buffer>
}

function octal (n: number, len: number): string {
  return n.toString(8).padStart(len - 1, '0') + '\0'
}

export function tarHeader (m: TarMember): Buffer {
  const h = Buffer.alloc(512)
  const size = m.size ?? m.data?.length ?? 0
  Buffer.from(m.name, 'latin1').copy(h, 0, 0, 100)
  h.write(octal(m.mode ?? 0o644, 8), 100, 'latin1')
  h.write(octal(m.uid ?? 0, 8), 108, 'latin1')
  h.write(octal(m.gid ?? 0, 8), 116, 'latin1')
  h.write(octal(size, 12), 124, 'latin1')
  h.write(octal(m.mtime ?? 1700000000, 12), 136, 'latin1')
  h.write(m.type ?? '0', 156, 'latin1')
  Buffer.from(m.linkname ?? '', 'latin1').copy(h, 157, 0, 100)
  h.write('ustar\0' + '00', 257, 'latin1')
  h.write(octal(m.devmajor ?? 0, 8), 329, 'latin1')
  h.write(octal(m.devminor ?? 0, 8), 337, 'latin1')
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const c of h) sum += c
  h.write(octal(sum, 7) + ' ', 148, 'latin1')
  return h
}

function pad (b: Buffer): Buffer {
  const r = b.length % 512
  return r === 0 ? b : Buffer.concat([b, Buffer.alloc(512 - r)])
}

export function paxData (records: Record<string, string | Buffer>): Buffer {
  const parts: Buffer[] = []
  for (const [k, v] of Object.entries(records)) {
    const body = Buffer.concat([Buffer.from(` ${k}=`, 'utf8'), Buffer.isBuffer(v) ? v : Buffer.from(v, 'latin1'), Buffer.from('\n')])
    let len = body.length + 1
    while (String(len).length + body.length !== len) len = String(len).length + body.length
    parts.push(Buffer.concat([Buffer.from(String(len)), body]))
  }
  return Buffer.concat(parts)
}

/** Builds a tar archive (with end-of-archive blocks unless `end: false`). */
export function makeTar (members: TarMember[], opts: { end?: boolean } = {}): Buffer {
  const out: Buffer[] = []
  for (const m of members) {
    if (m.pax !== undefined) {
      const d = paxData(m.pax)
      out.push(tarHeader({ name: 'PaxHeader', type: 'x', data: d }), pad(d))
    }
    out.push(tarHeader(m))
    if (m.data !== undefined && m.data.length > 0) out.push(pad(m.data))
  }
  if (opts.end !== false) out.push(Buffer.alloc(1024))
  return Buffer.concat(out)
}
