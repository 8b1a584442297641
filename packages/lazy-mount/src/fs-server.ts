/**
 * FUSE mode (`--mode fuse`, for kernels without file-backed EROFS): one layer's metadata image served as a
 * read-only FUSE filesystem in TypeScript (ErofsReader of @guoce/image), its file data read chunk by chunk
 * through the same ChunkReader as EROFS mode (node chunk store, else the blob source; verified). Layers
 * stack with overlayfs over these mounts, as over EROFS: whiteouts are char 0/0 inodes and opaque
 * directories carry `trusted.overlay.opaque`, served as they are stored.
 *
 * Who owns what: a layer server owns its FUSE mount and its caches (path -> nid, bounded). Names cross
 * fuse-native as UTF-8 strings: a name that is not valid UTF-8 cannot be looked up in this mode (EROFS mode
 * has no such limit). Times are served to the millisecond (fuse-native's stat), not the nanosecond, and
 * times before 1970 as 1970 (fuse-native's stat holds unsigned times).
 * Never read the mount from this process.
 */
import { readFile } from 'node:fs/promises'
import { LRUCache } from 'lru-cache'
import { BLOCK_SIZE, ErofsReader, extentAt, type ChunkExtent, type ErofsInode } from '@guoce/image'
import type { ChunkReader } from './chunk-reader.js'
import { Fuse, answerRead, fuseMount, type FuseOps, type FuseStat } from './fuse.js'
import { DEFAULT_READ_DEADLINE_MS } from './constants.js'

export interface LayerServerInit {
  mountpoint: string
  metaPath: string
  /** Blob digest per device (1-based device = index + 1). */
  blobs: string[]
  /** Chunk extents per blob digest, sorted by block address (a short chunk may be inside a pack: extentAt). */
  extents: Map<string, ChunkExtent[]>
  chunks: ChunkReader
  readDeadlineMs?: number
  log?: (obj: Record<string, unknown>) => void
  /** Told of every range of a blob's view that a read of a file covers (a trace recorder). */
  onRead?: (blob: string, pos: number, end: number) => void
}

export interface LayerServerStats { reads: number, bytesRead: number, failedReads: number }
export interface LayerServer { stats: () => LayerServerStats, close: () => Promise<void> }

const TYPE_BITS: Record<ErofsInode['kind'], number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000, socket: 0o140000
}
/** Paths and inodes kept resolved. */
const CACHE_ENTRIES = 65_536

/** Linux new_encode_dev, as st_rdev carries it. */
function encodeDev (major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0
}

const toBytes = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')
const toUtf8 = (s: string): string => Buffer.from(s, 'latin1').toString('utf8')

export async function serveLayer (init: LayerServerInit): Promise<LayerServer> {
  const reader = new ErofsReader(await readFile(init.metaPath))
  const deadlineMs = init.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS
  const inodes = new LRUCache<number, ErofsInode>({ max: CACHE_ENTRIES })
  const paths = new LRUCache<string, number>({ max: CACHE_ENTRIES })
  const dirs = new LRUCache<number, Map<string, number>>({ max: 4096 })
  const counters = { reads: 0, bytesRead: 0, failedReads: 0 }

  const inode = (nid: number): ErofsInode => {
    let ino = inodes.get(nid)
    if (ino === undefined) { ino = reader.inode(nid); inodes.set(nid, ino) }
    return ino
  }
  const entries = (nid: number): Map<string, number> => {
    let m = dirs.get(nid)
    if (m === undefined) {
      m = new Map()
      for (const d of reader.readDir(inode(nid))) if (d.name !== '.' && d.name !== '..') m.set(d.name, d.nid)
      dirs.set(nid, m)
    }
    return m
  }
  /** nid of a FUSE path ('/a/b', UTF-8), or undefined. */
  const lookup = (path: string): number | undefined => {
    if (path === '/') return reader.sb.rootNid
    const hit = paths.get(path)
    if (hit !== undefined) return hit
    const slash = path.lastIndexOf('/')
    const parent = lookup(slash === 0 ? '/' : path.slice(0, slash))
    if (parent === undefined || inode(parent).kind !== 'dir') return undefined
    const nid = entries(parent).get(toBytes(path.slice(slash + 1)))
    if (nid !== undefined) paths.set(path, nid)
    return nid
  }
  const statOf = (ino: ErofsInode): FuseStat => {
    // fuse-native carries times as unsigned milliseconds: a time before 1970 is served as the epoch
    const t = new Date(Math.max(0, ino.mtime * 1000 + Math.floor(ino.mtimeNsec / 1e6)))
    return {
      mode: TYPE_BITS[ino.kind] | ino.mode, size: ino.kind === 'dir' ? BLOCK_SIZE : ino.size, nlink: ino.nlink, uid: ino.uid, gid: ino.gid,
      rdev: ino.kind === 'char' || ino.kind === 'block' ? encodeDev(ino.major ?? 0, ino.minor ?? 0) : 0,
      mtime: t, atime: t, ctime: t
    }
  }
  /** Resolves a path for a handler; answers ENOENT (or the reader's fault as EIO) itself. */
  const withInode = (path: string, fail: (errno: number) => void, fn: (ino: ErofsInode) => void): void => {
    let ino: ErofsInode | undefined
    try {
      const nid = lookup(path)
      if (nid !== undefined) ino = inode(nid)
    } catch (err) {
      init.log?.({ msg: 'metadata fault', path, err: (err as Error).message })
      fail(Fuse.EIO); return
    }
    if (ino === undefined) { fail(Fuse.ENOENT); return }
    fn(ino)
  }

  /** Copies file bytes [pos, end) into buf: chunk by chunk, holes as zeros. */
  const fill = async (ino: ErofsInode, buf: Buffer, pos: number, end: number): Promise<void> => {
    buf.fill(0, 0, end - pos)
    if (ino.data !== undefined) { ino.data.copy(buf, 0, pos, end); return }
    const cs = ino.chunkSize ?? 0
    const refs = ino.chunks ?? []
    if (cs === 0) return
    const jobs: Array<Promise<void>> = []
    for (let i = Math.floor(pos / cs); i * cs < end; i++) {
      const ref = refs[i]
      if (ref === null || ref === undefined) continue // a hole
      const blob = init.blobs[ref.device - 1]
      const e = blob === undefined ? undefined : extentAt(init.extents.get(blob) ?? [], ref.blkaddr)
      if (blob === undefined || e === undefined) throw new Error(`nid ${ino.nid}: chunk ${i} at device ${ref.device} block ${ref.blkaddr} is not in the chunk table`)
      const start = i * cs
      const skip = (ref.blkaddr - e.blkaddr) * BLOCK_SIZE
      if (init.onRead !== undefined) {
        const at = ref.blkaddr * BLOCK_SIZE - start // blob view offset of file byte 0 of this chunk
        init.onRead(blob, at + Math.max(pos, start), at + Math.min(end, start + cs, ino.size))
      }
      jobs.push((async () => {
        const data = (await init.chunks.read(blob, e)).subarray(skip, skip + Math.min(cs, ino.size - start))
        const from = Math.max(pos, start)
        const to = Math.min(end, start + data.length)
        if (to > from) data.copy(buf, from - pos, from - start, to - start)
      })())
    }
    await Promise.all(jobs)
  }

  const ops: FuseOps = {
    getattr (path, cb) { withInode(path, cb, ino => { cb(0, statOf(ino)) }) },
    readdir (path, cb) {
      withInode(path, cb, ino => {
        if (ino.kind !== 'dir') { cb(Fuse.ENOTDIR); return }
        try {
          const names: string[] = []; const stats: FuseStat[] = []
          for (const [name, nid] of entries(ino.nid)) { names.push(toUtf8(name)); stats.push(statOf(inode(nid))) }
          cb(0, names, stats)
        } catch { cb(Fuse.EIO) }
      })
    },
    readlink (path, cb) {
      withInode(path, cb, ino => {
        if (ino.kind !== 'symlink' || ino.data === undefined) { cb(Fuse.EINVAL); return }
        cb(0, toUtf8(ino.data.toString('latin1')))
      })
    },
    getxattr (path, name, _position, cb) {
      withInode(path, cb, ino => {
        const v = ino.xattrs.get(toBytes(name))
        if (v === undefined) { cb(Fuse.ENODATA); return }
        cb(0, v)
      })
    },
    listxattr (path, cb) { withInode(path, cb, ino => { cb(0, [...ino.xattrs.keys()].map(toUtf8)) }) },
    open (path, flags, cb) {
      withInode(path, cb, ino => {
        if ((flags & 3) !== 0) { cb(Fuse.EACCES); return }
        cb(0, ino.nid)
      })
    },
    release (_path, _fd, cb) { cb(0) },
    read (path, _fd, buf, len, pos, cb) {
      withInode(path, cb, ino => {
        counters.reads++
        if (ino.kind !== 'file') { cb(Fuse.EISDIR); return }
        if (pos >= ino.size) { cb(0); return }
        const end = Math.min(ino.size, pos + len)
        answerRead(cb, end - pos, async () => { await fill(ino, buf, pos, end) }, { deadlineMs, counters, ...(init.log !== undefined ? { log: init.log } : {}), what: { path, pos, len } })
      })
    }
  }

  const fuse = await fuseMount(init.mountpoint, ops, { fsname: 'guoce-layer', timeoutMs: deadlineMs + 5_000 })
  return { stats: () => ({ ...counters }), close: async () => { await fuse.unmount() } }
}
