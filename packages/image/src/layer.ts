/**
 * Applies tar members to an in-memory tree the way GNU tar extracts them, without touching a disk:
 * - names are made relative (leading `/` dropped), `.` removed, `..` resolved; climbing above the
 *   root is an UnsafePathError;
 * - a later member replaces an earlier one of the same name (the last one wins); a directory member
 *   over an existing directory updates its metadata and keeps its children;
 * - parents that have no member of their own are created with the attributes the layers below give
 *   them (LowerDirs), else 0755, root, the member's mtime;
 * - a path through a non-directory (e.g. a symlink) is an UnsafePathError: symlinks are never followed;
 * - hardlinks share the target's node (one inode), the target must be an earlier non-directory;
 * - OCI whiteouts become overlayfs whiteouts: `.wh.NAME` -> char device 0/0 `NAME`,
 *   `.wh..wh..opq` -> `trusted.overlay.opaque=y` on the directory; other `.wh..wh.*` names are dropped.
 */
import { MAX_NAME, MAX_PATH } from './constants.js'
import { HardlinkTargetError, UnsafePathError, UnsupportedTarError } from './errors.js'
import { encodeXattrName } from './erofs/writer.js'
import type { TarEntry } from './tar/reader.js'
import { newDir, type ChunkRef, type DirNode, type Node, type NodeMeta } from './tree.js'

export const WHITEOUT_PREFIX = '.wh.'
export const WHITEOUT_OPAQUE = '.wh..wh..opq'
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque'

export type WhiteoutMode = 'overlay' | 'keep'

/** Splits a member name into safe components; [] is the root. */
export function normalizePath (raw: string, what = 'member name'): string[] {
  if (raw.length > MAX_PATH) throw new UnsafePathError(`${what} longer than ${MAX_PATH} bytes`)
  if (raw.includes('\0')) throw new UnsafePathError(`${what} contains a NUL byte`)
  const out: string[] = []
  for (const c of raw.split('/')) {
    if (c === '' || c === '.') continue
    if (c === '..') {
      if (out.length === 0) throw new UnsafePathError(`${what} ${JSON.stringify(raw)} climbs out of the root`)
      out.pop()
      continue
    }
    if (c.length > MAX_NAME) throw new UnsafePathError(`${what} ${JSON.stringify(raw)} has a component longer than ${MAX_NAME} bytes`)
    out.push(c)
  }
  return out
}

function copyMeta (m: NodeMeta): NodeMeta {
  return { mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime, mtimeNsec: m.mtimeNsec, xattrs: new Map(m.xattrs) }
}

/**
 * Directory attributes of the layers below, as the overlay of them shows them (path '' is the root).
 * A layer that has a member `a/b/c` but none for `a/` or `a/b/` still needs those directories in its
 * own filesystem; with overlayfs the upper directory's attributes win, so they are copied from here
 * instead of invented. Updated by each converted layer (whiteouts and opaque directories applied).
 */
export class LowerDirs {
  private readonly dirs = new Map<string, NodeMeta>()

  get (path: string): NodeMeta | undefined {
    const m = this.dirs.get(path)
    return m === undefined ? undefined : copyMeta(m)
  }

  private dropUnder (path: string, self: boolean): void {
    if (self) this.dirs.delete(path)
    const prefix = path === '' ? '' : `${path}/`
    for (const k of [...this.dirs.keys()]) if (k !== '' && k.startsWith(prefix) && k !== path) this.dirs.delete(k)
  }

  /** Stacks a converted layer's tree on top. */
  apply (root: DirNode): void {
    const walk = (dir: DirNode, path: string): void => {
      if (dir.xattrs.get(OVERLAY_OPAQUE_XATTR)?.toString() === 'y') this.dropUnder(path, false)
      const meta = copyMeta(dir)
      meta.xattrs.delete(OVERLAY_OPAQUE_XATTR)
      this.dirs.set(path, meta)
      for (const [name, node] of dir.entries) {
        const p = path === '' ? name : `${path}/${name}`
        if (node.kind === 'dir') walk(node, p)
        else this.dropUnder(p, true)
      }
    }
    walk(root, '')
  }
}

export class LayerBuilder {
  readonly root: DirNode
  private readonly opaque = new Set<DirNode>()
  private readonly whiteouts: WhiteoutMode
  private readonly lower: LowerDirs | undefined
  files = 0

  constructor (whiteouts: WhiteoutMode = 'overlay', lower?: LowerDirs) {
    this.lower = lower
    this.root = newDir(lower?.get('') ?? { mode: 0o755, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, xattrs: new Map() })
    this.whiteouts = whiteouts
  }

  private meta (e: TarEntry): NodeMeta {
    for (const name of e.xattrs.keys()) {
      try { encodeXattrName(name) } catch { throw new UnsupportedTarError(`member ${JSON.stringify(e.path)}: xattr ${JSON.stringify(name)} has a namespace EROFS cannot store`) }
    }
    return { mode: e.mode & 0o7777, uid: e.uid, gid: e.gid, mtime: e.mtime, mtimeNsec: e.mtimeNsec, xattrs: new Map(e.xattrs) }
  }

  /** Walks to the parent directory of `parts`, creating missing directories. */
  private parentOf (parts: string[], e: TarEntry): DirNode {
    let dir = this.root
    for (let i = 0; i < parts.length - 1; i++) {
      const name = parts[i]!
      const child = dir.entries.get(name)
      if (child === undefined) {
        const d = newDir(this.lower?.get(parts.slice(0, i + 1).join('/')) ?? { mode: 0o755, uid: 0, gid: 0, mtime: e.mtime, mtimeNsec: e.mtimeNsec, xattrs: new Map() })
        dir.entries.set(name, d)
        dir = d
      } else if (child.kind === 'dir') {
        dir = child
      } else {
        throw new UnsafePathError(`member ${JSON.stringify(e.path)} goes through ${JSON.stringify(parts.slice(0, i + 1).join('/'))}, a ${child.kind}, not a directory (never followed)`)
      }
    }
    return dir
  }

  private lookup (parts: string[]): Node | undefined {
    let node: Node = this.root
    for (const name of parts) {
      if (node.kind !== 'dir') return undefined
      const next: Node | undefined = node.entries.get(name)
      if (next === undefined) return undefined
      node = next
    }
    return node
  }

  /**
   * Applies one member. For regular files `chunk` turns the data into chunk refs.
   */
  async apply (e: TarEntry, data: AsyncIterable<Buffer>, chunk: (data: AsyncIterable<Buffer>, size: number, sparse?: TarEntry['sparse']) => Promise<Array<ChunkRef | null>>): Promise<void> {
    const parts = normalizePath(e.path)
    if (parts.length === 0) {
      if (e.type !== 'dir') throw new UnsafePathError(`member ${JSON.stringify(e.path)} names the root but is a ${e.type}`)
      Object.assign(this.root, this.meta(e))
      return
    }
    const base = parts[parts.length - 1]!
    if (this.whiteouts === 'overlay' && base.startsWith(WHITEOUT_PREFIX)) {
      const parent = this.parentOf(parts, e)
      if (base === WHITEOUT_OPAQUE) {
        this.opaque.add(parent)
      } else if (!base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) {
        const name = base.slice(WHITEOUT_PREFIX.length)
        if (name === '' || name === '.' || name === '..') throw new UnsafePathError(`whiteout ${JSON.stringify(e.path)} names no file`)
        parent.entries.set(name, { ...this.meta(e), kind: 'char', major: 0, minor: 0 })
      }
      return
    }
    const parent = this.parentOf(parts, e)
    const existing = parent.entries.get(base)
    switch (e.type) {
      case 'dir': {
        if (existing?.kind === 'dir') {
          Object.assign(existing, this.meta(e))
        } else {
          parent.entries.set(base, newDir(this.meta(e)))
        }
        return
      }
      case 'file': {
        const chunks = await chunk(data, e.size, e.sparse)
        parent.entries.set(base, { ...this.meta(e), kind: 'file', size: e.sparse?.size ?? e.size, chunks })
        this.files++
        return
      }
      case 'symlink':
        // Linux symlinks are always 0777 whatever the header says (symlink(2) ignores the mode)
        parent.entries.set(base, { ...this.meta(e), mode: 0o777, kind: 'symlink', target: Buffer.from(e.linkpath, 'latin1') })
        if (e.linkpath.length === 0) throw new UnsafePathError(`symlink ${JSON.stringify(e.path)} has an empty target`)
        return
      case 'hardlink': {
        const tparts = normalizePath(e.linkpath, 'hardlink target')
        const target = this.lookup(tparts)
        if (target === undefined) throw new HardlinkTargetError(`hardlink ${JSON.stringify(e.path)} -> ${JSON.stringify(e.linkpath)}: target is not an earlier member of the layer`)
        if (target.kind === 'dir') throw new HardlinkTargetError(`hardlink ${JSON.stringify(e.path)} -> ${JSON.stringify(e.linkpath)}: target is a directory`)
        if (target === existing) return
        parent.entries.set(base, target)
        return
      }
      case 'char': case 'block':
        parent.entries.set(base, { ...this.meta(e), kind: e.type, major: e.devmajor, minor: e.devminor })
        return
      case 'fifo':
        parent.entries.set(base, { ...this.meta(e), kind: 'fifo' })
    }
  }

  /** Applies the opaque markers; returns the root. */
  finish (): DirNode {
    for (const d of this.opaque) d.xattrs.set(OVERLAY_OPAQUE_XATTR, Buffer.from('y'))
    return this.root
  }
}
