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
import { CorruptImageError, type ChunkExtent } from '@guoce/image'
import type { ChunkReader } from './chunk-reader.js'
import { DEFAULT_READAHEAD, DEFAULT_READ_DEADLINE_MS, READAHEAD_MIN_RUN } from './constants.js'
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
  /** Bytes fetched ahead of a sequential reader (0: none). @default DEFAULT_READAHEAD */
  readahead?: number
  /** Told of every range of a blob the kernel reads (a trace recorder). */
  onRead?: (blob: string, pos: number, end: number) => void
}

export interface BlobServerStats {
  reads: number
  /** Bytes handed to the kernel. */
  bytesRead: number
  /** Reads answered with EIO. */
  failedReads: number
  /** Stored chunks from a source that did not decode to their digest (refused, asked again). */
  refused: number
  /** Stored (compressed) bytes of the chunks that verified: what came over the network. */
  fetchedStoredBytes?: number
}

export interface BlobServer {
  readonly mountpoint: string
  /** Path of a blob's file on the mount. */
  path: (digest: string) => string
  /**
   * Serves more blobs (a layer that arrived later). A blob already served gets the union of its extents;
   * a size or chunk that disagrees with what is served throws CorruptImageError and changes nothing.
   */
  add: (blobs: BlobFile[]) => void
  stats: () => BlobServerStats
  close: () => Promise<void>
}

const FILE_MODE = 0o100444
const DIR_MODE = 0o40555

export async function serveBlobs (init: BlobServerInit): Promise<BlobServer> {
  const { chunks } = init
  const deadlineMs = init.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS
  const byName = new Map<string, BlobFile>()
  const add = (blobs: BlobFile[]): void => {
    const next = new Map<string, BlobFile>()
    for (const b of blobs) {
      const name = b.digest.replace(/^sha256:/, '')
      const known = next.get(name) ?? byName.get(name)
      next.set(name, known === undefined ? b : mergeBlob(known, b))
    }
    // replaced whole: a read in flight keeps the extents it started with
    for (const [k, b] of next) byName.set(k, b)
  }
  add(init.blobs)
  const counters = { reads: 0, bytesRead: 0, failedReads: 0 }
  const epoch = new Date()
  const readahead = init.readahead ?? DEFAULT_READAHEAD
  /** Per blob: where its last read ended, where that sequential run began, how far ahead chunks were asked for. */
  const seq = new Map<string, { end: number, start: number, ahead: number }>()

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

  /**
   * A read that starts where the previous one of the blob ended continues a sequential run. Once the run is
   * READAHEAD_MIN_RUN long, the chunks after it are asked for in the background (each once; failures are left
   * to the reads), half as far ahead as the run is long, up to `readahead` bytes: a start-up that reads small files
   * here and there fetches nothing more, a file streamed from start to end gets its next chunks early.
   */
  const readAhead = (blob: BlobFile, pos: number, end: number): void => {
    const s = seq.get(blob.digest)
    const run = s !== undefined && s.end === pos ? { start: s.start, ahead: Math.max(s.ahead, end) } : { start: pos, ahead: end }
    seq.set(blob.digest, { end, ...run })
    const length = end - run.start
    if (readahead <= 0 || length < READAHEAD_MIN_RUN) return
    const window = Math.min(readahead, Math.floor(length / 2))
    if (run.ahead >= end + window / 2) return
    const until = Math.min(blob.size, end + window)
    for (let i = firstExtent(blob.extents, run.ahead); i < blob.extents.length; i++) {
      const e = blob.extents[i]!
      if (e.blkaddr * 4096 >= until) break
      void chunks.read(blob.digest, e, { background: true }).catch(() => {})
    }
    seq.set(blob.digest, { end, start: run.start, ahead: until })
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
      readAhead(b, pos, end)
      init.onRead?.(b.digest, pos, end)
      answerRead(cb, end - pos, async () => { await fill(b, buf, pos, end) }, { deadlineMs, counters, ...(init.log !== undefined ? { log: init.log } : {}), what: { blob: b.digest, pos, len } })
    }
  }

  const fuse = await fuseMount(init.mountpoint, ops, { fsname: 'guoce-blobs', timeoutMs: deadlineMs + 5_000 })

  let closed: Promise<void> | undefined
  return {
    mountpoint: init.mountpoint,
    add,
    path: (digest) => `${init.mountpoint}/${digest.replace(/^sha256:/, '')}`,
    stats: () => ({ ...counters, refused: chunks.refused(), fetchedStoredBytes: chunks.fetchedStoredBytes() }),
    close: async () => {
      closed ??= (async () => {
        await fuse.unmount()
      })()
      await closed
    }
  }
}

/** One blob as two layers describe it: the union of their extents (they must agree on size and on shared chunks). */
export function mergeBlob (a: BlobFile, b: BlobFile): BlobFile {
  if (a.size !== b.size) throw new CorruptImageError(`blob ${a.digest}: layers disagree on its size (${a.size} and ${b.size})`)
  const byAddr = new Map(a.extents.map(e => [e.blkaddr, e]))
  for (const e of b.extents) {
    const known = byAddr.get(e.blkaddr)
    if (known === undefined) byAddr.set(e.blkaddr, e)
    else if (!known.digest.equals(e.digest) || known.length !== e.length || known.storedOffset !== e.storedOffset) {
      throw new CorruptImageError(`blob ${a.digest} block ${e.blkaddr}: layers disagree on its chunk`)
    }
  }
  const extents = [...byAddr.values()].sort((x, y) => x.blkaddr - y.blkaddr)
  for (let i = 1; i < extents.length; i++) {
    const p = extents[i - 1]!
    if (p.blkaddr * 4096 + p.length > extents[i]!.blkaddr * 4096) throw new CorruptImageError(`blob ${a.digest}: chunks overlap at block ${extents[i]!.blkaddr}`)
  }
  return { digest: a.digest, size: a.size, extents }
}
