/**
 * The FUSE blob server (EROFS mode): one read-only file per data blob, named by the blob's sha256 hex,
 * whose bytes are the blob's uncompressed view (what the EROFS device table describes and what kernel EROFS
 * reads through `-o device=`). A read maps (blob, offset) -> chunk extents (the chunk tables of the image's
 * metadata layers, through @guoce/image readChunkTable) -> node chunk store -> else the blob source, decodes
 * and verifies the chunk (decodeChunk), and copies the part asked for. Bytes of the view no chunk covers (the
 * padding after a chunk) read as zeros.
 *
 * Who owns what: a BlobServer owns its FUSE mount and the in-flight reads. A read fails with EIO (never with
 * wrong bytes) when no attempt gave a chunk that verifies within `fetchAttempts` or the read deadline.
 * Never read the mount from this process: FUSE requests are answered on this process's JS thread.
 */
import type { ChunkExtent } from '@guoce/image'
import type { ChunkReader } from './chunk-reader.js'
import { DEFAULT_READ_DEADLINE_MS } from './constants.js'
import { Fuse, answerRead, fuseMount, type FuseOps } from './fuse.js'

/** One data blob as served: its digest, view size and chunk extents sorted by blkaddr (`device` is not used). */
export interface BlobFile {
  digest: string
  size: number
  extents: ChunkExtent[]
}

export interface BlobServerInit {
  mountpoint: string
  blobs: BlobFile[]
  chunks: ChunkReader
  log?: (obj: Record<string, unknown>) => void
  /** @default DEFAULT_READ_DEADLINE_MS */
  readDeadlineMs?: number
}

export interface BlobServerStats {
  reads: number
  /** Bytes handed to the kernel. */
  bytesRead: number
  /** Reads answered with EIO. */
  failedReads: number
  /** Stored chunks from a source that did not decode to their digest (refused, asked again). */
  refused: number
}

export interface BlobServer {
  readonly mountpoint: string
  /** Path of a blob's file on the mount. */
  path: (digest: string) => string
  stats: () => BlobServerStats
  close: () => Promise<void>
}

const FILE_MODE = 0o100444
const DIR_MODE = 0o40555

export async function serveBlobs (init: BlobServerInit): Promise<BlobServer> {
  const { chunks } = init
  const deadlineMs = init.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS
  const byName = new Map<string, BlobFile>()
  for (const b of init.blobs) byName.set(b.digest.replace(/^sha256:/, ''), b)
  const counters = { reads: 0, bytesRead: 0, failedReads: 0 }
  const epoch = new Date()

  /** Index of the first extent whose end is past `pos`. */
  const firstExtent = (ext: ChunkExtent[], pos: number): number => {
    let lo = 0; let hi = ext.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const e = ext[mid]!
      if (e.blkaddr * 4096 + e.length <= pos) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  const fill = async (blob: BlobFile, buf: Buffer, pos: number, end: number): Promise<void> => {
    buf.fill(0, 0, end - pos)
    const jobs: Array<Promise<void>> = []
    for (let i = firstExtent(blob.extents, pos); i < blob.extents.length; i++) {
      const e = blob.extents[i]!
      const start = e.blkaddr * 4096
      if (start >= end) break
      jobs.push((async () => {
        const data = await chunks.read(blob.digest, e)
        const from = Math.max(pos, start)
        const to = Math.min(end, start + e.length)
        data.copy(buf, from - pos, from - start, to - start)
      })())
    }
    await Promise.all(jobs)
  }

  const ops: FuseOps = {
    getattr (path, cb) {
      if (path === '/') { cb(0, { mode: DIR_MODE, size: 4096, nlink: 2, mtime: epoch, atime: epoch, ctime: epoch }); return }
      const b = byName.get(path.slice(1))
      if (b === undefined) { cb(Fuse.ENOENT); return }
      cb(0, { mode: FILE_MODE, size: b.size, nlink: 1, mtime: epoch, atime: epoch, ctime: epoch })
    },
    readdir (path, cb) {
      if (path !== '/') { cb(Fuse.ENOENT); return }
      cb(0, [...byName.keys()])
    },
    open (path, flags, cb) {
      if (byName.get(path.slice(1)) === undefined) { cb(Fuse.ENOENT); return }
      if ((flags & 3) !== 0) { cb(Fuse.EACCES); return }
      cb(0, 0)
    },
    release (_path, _fd, cb) { cb(0) },
    read (path, _fd, buf, len, pos, cb) {
      const b = byName.get(path.slice(1))
      if (b === undefined) { cb(Fuse.ENOENT); return }
      counters.reads++
      if (pos >= b.size) { cb(0); return }
      const end = Math.min(b.size, pos + len)
      answerRead(cb, end - pos, async () => { await fill(b, buf, pos, end) }, { deadlineMs, counters, ...(init.log !== undefined ? { log: init.log } : {}), what: { blob: b.digest, pos, len } })
    }
  }

  const fuse = await fuseMount(init.mountpoint, ops, { fsname: 'guoce-blobs', timeoutMs: deadlineMs + 5_000 })

  let closed: Promise<void> | undefined
  return {
    mountpoint: init.mountpoint,
    path: (digest) => `${init.mountpoint}/${digest.replace(/^sha256:/, '')}`,
    stats: () => ({ ...counters, refused: chunks.refused() }),
    close: async () => {
      closed ??= (async () => {
        await fuse.unmount()
      })()
      await closed
    }
  }
}
