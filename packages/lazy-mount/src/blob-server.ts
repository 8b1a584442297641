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
import { createRequire } from 'node:module'
import { mkdir } from 'node:fs/promises'
import { decodeChunk, type ChunkExtent } from '@guoce/image'
import type { ChunkStore } from './chunk-store.js'
import type { BlobSource } from './source.js'
import { ChunkUnavailableError } from './errors.js'
import { DEFAULT_FETCH_ATTEMPTS, DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_READ_DEADLINE_MS, FAILED_CHUNK_TTL_MS } from './constants.js'

const require = createRequire(import.meta.url)

interface FuseStat { mode: number, size: number, nlink?: number, uid?: number, gid?: number, mtime: Date, atime: Date, ctime: Date }
type Cb<T extends unknown[] = []> = (err: number, ...rest: T) => void
interface FuseOps {
  getattr: (path: string, cb: Cb<[FuseStat?]>) => void
  readdir: (path: string, cb: Cb<[string[]?]>) => void
  open: (path: string, flags: number, cb: Cb<[number?]>) => void
  release: (path: string, fd: number, cb: Cb) => void
  read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => void
}
interface FuseInstance { mount: (cb: (err: Error | null) => void) => void, unmount: (cb: (err: Error | null) => void) => void }
interface FuseClass {
  new (mnt: string, ops: FuseOps, opts: Record<string, unknown>): FuseInstance
  EIO: number, ENOENT: number, EISDIR: number, EACCES: number
}

/** One data blob as served: its digest, view size and chunk extents sorted by blkaddr (`device` is not used). */
export interface BlobFile {
  digest: string
  size: number
  extents: ChunkExtent[]
}

export interface BlobServerInit {
  mountpoint: string
  blobs: BlobFile[]
  store: ChunkStore
  source: BlobSource
  /** @default DEFAULT_FETCH_TIMEOUT_MS */
  fetchTimeoutMs?: number
  /** @default DEFAULT_FETCH_ATTEMPTS */
  fetchAttempts?: number
  /** @default DEFAULT_READ_DEADLINE_MS */
  readDeadlineMs?: number
  /** First reads, in order (for `--record-trace`): called once per chunk on its first read. */
  onFirstRead?: (blob: string, e: ChunkExtent) => void
  log?: (obj: Record<string, unknown>) => void
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
  const Fuse = require('fuse-native') as FuseClass
  const { store, source } = init
  const fetchTimeoutMs = init.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS
  const attempts = init.fetchAttempts ?? DEFAULT_FETCH_ATTEMPTS
  const deadlineMs = init.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS
  const byName = new Map<string, BlobFile>()
  for (const b of init.blobs) byName.set(b.digest.replace(/^sha256:/, ''), b)
  const closing = new AbortController()
  const counters: BlobServerStats = { reads: 0, bytesRead: 0, failedReads: 0, refused: 0 }
  const seen = new Set<string>()
  /** `blob/blkaddr` -> until when reads of it fail at once (FAILED_CHUNK_TTL_MS). */
  const failed = new Map<string, { until: number, err: Error }>()
  const epoch = new Date()

  const fetchChunk = async (blob: BlobFile, e: ChunkExtent): Promise<Buffer> => {
    let last: unknown
    for (let i = 0; i < attempts; i++) {
      if (closing.signal.aborted) break
      const signal = AbortSignal.any([closing.signal, AbortSignal.timeout(fetchTimeoutMs)])
      try {
        const stored = await source.read(blob.digest, e.storedOffset, e.storedLength, signal)
        return decodeChunk(e, stored)
      } catch (err) {
        last = err
        if ((err as Error).name === 'ChunkDigestMismatchError') counters.refused++
        init.log?.({ msg: 'chunk fetch failed', blob: blob.digest, blkaddr: e.blkaddr, attempt: i + 1, err: (err as Error).message })
      }
    }
    throw new ChunkUnavailableError(`blob ${blob.digest} block ${e.blkaddr}: no verified bytes after ${attempts} attempts: ${(last as Error | undefined)?.message ?? 'closing'}`, { cause: last })
  }

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
      if (init.onFirstRead !== undefined) {
        const k = `${blob.digest}/${e.blkaddr}`
        if (!seen.has(k)) { seen.add(k); init.onFirstRead(blob.digest, e) }
      }
      const key = `${blob.digest}/${e.blkaddr}`
      jobs.push((async () => {
        const f = failed.get(key)
        if (f !== undefined) {
          if (f.until > Date.now()) throw f.err
          failed.delete(key)
        }
        const data = await store.get(e.digest, e.length, async () => await fetchChunk(blob, e)).catch((err: Error) => {
          if (failed.size > 4096) failed.clear() // bounded: it only shortens retries
          failed.set(key, { until: Date.now() + FAILED_CHUNK_TTL_MS, err })
          throw err
        })
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
      let answered = false
      const answer = (n: number): void => { if (!answered) { answered = true; clearTimeout(timer); cb(n) } }
      const timer = setTimeout(() => { counters.failedReads++; init.log?.({ msg: 'read past its deadline', blob: b.digest, pos, len }); answer(Fuse.EIO) }, deadlineMs)
      fill(b, buf, pos, end).then(() => {
        if (answered) return
        counters.bytesRead += end - pos
        answer(end - pos)
      }, (err: Error) => {
        if (answered) return
        counters.failedReads++
        init.log?.({ msg: 'read failed', blob: b.digest, pos, len, err: err.message })
        answer(Fuse.EIO)
      })
    }
  }

  await mkdir(init.mountpoint, { recursive: true })
  const fuse = new Fuse(init.mountpoint, ops, {
    // the view of a blob never changes: let the kernel keep its pages and attributes
    kernelCache: true,
    attrTimeout: 3600,
    entryTimeout: 3600,
    fsname: 'guoce-blobs',
    // a backstop past our own deadline: fuse-native answers ETIMEDOUT if a handler never calls back
    timeout: deadlineMs + 5_000
  })
  await new Promise<void>((resolve, reject) => { fuse.mount(err => { if (err != null) reject(err); else resolve() }) })

  let closed: Promise<void> | undefined
  return {
    mountpoint: init.mountpoint,
    path: (digest) => `${init.mountpoint}/${digest.replace(/^sha256:/, '')}`,
    stats: () => ({ ...counters }),
    close: async () => {
      closed ??= (async () => {
        closing.abort()
        await new Promise<void>((resolve) => { fuse.unmount(() => { resolve() }) })
        await source.close()
      })()
      await closed
    }
  }
}
