/**
 * `guoce image mount erofs+http(s)://HOST/PATH/os.erofs DIR`: a plain EROFS OS image file (not converted),
 * mounted lazily. The image file appears on a FUSE mount of this process (one read-only file, `image`),
 * whose bytes are the content-defined chunks of the image's .gcidx (URL + `.gcidx`, made by `guoce index`):
 * a read maps (offset, length) -> the chunks it overlaps -> node chunk store -> else a Range read of a
 * ranged task of URL on the peer daemon (the swarm, else the origin; only the pieces a read touches are
 * fetched), each chunk verified against the index's sha256 before any byte of it is served. The kernel
 * mounts that file file-backed as EROFS (raw mount(2), native/mount) at DIR: metadata and data both come
 * through the FUSE file, so only what is read is fetched.
 *
 * Verification authority: the index's chunk digests. The index itself comes through the daemon from the
 * origin (URL-named content: the origin is its authority, doc/SECURITY.md), or is pinned by the user with
 * `indexDigest` (then no host, origin included, can change a served byte); `digest` (the whole image's
 * sha256) must equal the file digest the index declares.
 *
 * Who owns what: the OsImageMount owns the FUSE server, the chunk store handle, the ranged task's source,
 * the EROFS mount and its state file (state.ts: a dead serving process is cleaned up by the next
 * mount/umount); `unmount()` undoes them, top first. Never read DIR from this process.
 */
import { createHash } from 'node:crypto'
import { mkdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import * as native from '@guoce/native-mount'
import { unixFetch, type FetchInit } from '@guoce/interface'
import type { ChunkExtent } from '@guoce/image'
import { chunkDigest, fileDigest, parseIndex, IndexMismatchError, INDEX_HEADER_BYTES, INDEX_ENTRY_BYTES, INDEX_SUFFIX, MAX_INDEX_CHUNKS, type ChunkIndex } from '@guoce/delta'
import { chunkReader } from './chunk-reader.js'
import { openChunkStore, type ChunkStoreStats } from './chunk-store.js'
import { Fuse, answerRead, fuseMount, type FuseOps } from './fuse.js'
import { claimMount, undoMounts, writeState, type MountState } from './state.js'
import { BlobSourceError, LazyMountError } from './errors.js'
import { DEFAULT_READ_DEADLINE_MS } from './constants.js'
import type { BlobServerStats } from './blob-server.js'

export interface OsImageMountOptions {
  /** The peer daemon's local API (http://HOST:PORT or unix:/PATH). */
  daemon: string
  stateDir: string
  chunkDir: string
  chunkQuota?: number
  /** `sha256:HEX` of the image: must be the file digest the index declares. */
  digest?: string
  /** `sha256:HEX` of the .gcidx: pins the index (and so every chunk) to what the user named. */
  indexDigest?: string
  fetchTimeoutMs?: number
  fetchAttempts?: number
  readDeadlineMs?: number
  log?: (obj: Record<string, unknown>) => void
}

export interface OsImageStats { server: BlobServerStats, store: ChunkStoreStats, imageBytes: number, chunks: number }

export interface OsImageMount {
  id: string
  target: string
  state: MountState
  /** The image file on the FUSE mount. */
  image: string
  stats: () => OsImageStats
  unmount: () => Promise<void>
}

/** `erofs+http(s)://...` -> the image's http(s) URL; undefined for other refs. */
export function osImageUrl (ref: string): string | undefined {
  const m = /^erofs\+(https?:\/\/.+)$/.exec(ref)
  return m?.[1]
}

const ACCESS_HEADER = 'x-guoce-access'
const DIGEST = /^sha256:[0-9a-f]{64}$/

interface RangedTask { read: (offset: number, length: number, signal: AbortSignal) => Promise<Buffer>, total: () => number | undefined }

/** Range reads of a ranged task of `url` on the daemon (started on first use; restarted after a failure). */
function rangedTask (api: string, url: string): RangedTask {
  const unix = api.startsWith('unix:') ? api.slice(5) : undefined
  const base = unix !== undefined ? 'http://localhost' : api.replace(/\/+$/, '')
  const get = async (path: string, req: FetchInit): Promise<Response> => unix !== undefined ? await unixFetch(unix, path, req) : await globalThis.fetch(base + path, req)
  let task: Promise<{ taskId: string, access: string }> | undefined
  let total: number | undefined
  const start = async (signal: AbortSignal): Promise<{ taskId: string, access: string }> => {
    task ??= (async () => {
      const res = await get('/api/v1/tasks', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url, ranged: true }), signal })
      const body = await res.json().catch(() => undefined) as { taskId?: unknown, access?: unknown, error?: { message?: string } } | undefined
      if (!res.ok || typeof body?.taskId !== 'string' || typeof body.access !== 'string') throw new BlobSourceError(`daemon refused a task for ${url}: ${res.status} ${body?.error?.message ?? ''}`)
      return { taskId: body.taskId, access: body.access }
    })()
    task.catch(() => { task = undefined })
    return await task
  }
  return {
    total: () => total,
    async read (offset, length, signal) {
      const t = await start(signal)
      const res = await get(`/api/v1/tasks/${t.taskId}/content`, { headers: { range: `bytes=${offset}-${offset + length - 1}`, [ACCESS_HEADER]: t.access }, signal })
      if (res.status !== 206) {
        const text = await res.text().catch(() => '')
        task = undefined
        throw new BlobSourceError(`daemon: ${url} range ${offset}+${length}: status ${res.status} ${text.slice(0, 200)}`)
      }
      const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get('content-range') ?? '')
      if (m === null || Number(m[1]) !== offset || Number(m[2]) !== offset + length - 1) { await res.body?.cancel(); throw new BlobSourceError(`daemon: ${url} range ${offset}+${length} answered as ${res.headers.get('content-range') ?? '(none)'}`) }
      total = Number(m[3])
      const buf = Buffer.allocUnsafe(length)
      let got = 0
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (got + part.length > length) throw new BlobSourceError(`daemon: ${url} range ${offset}+${length}: more bytes than asked for`)
        buf.set(part, got)
        got += part.length
      }
      if (got !== length) throw new BlobSourceError(`daemon: ${url} range ${offset}+${length}: ${got} bytes`)
      return buf
    }
  }
}

/**
 * The image's .gcidx through the daemon, read as hostile: its 72-byte header first, then exactly the
 * entries the header declares (bounded by MAX_INDEX_CHUNKS before anything is allocated for them).
 */
async function fetchIndex (api: string, url: string, o: { indexDigest?: string, signal: AbortSignal }): Promise<ChunkIndex> {
  const what = `${url}${INDEX_SUFFIX}`
  const t = rangedTask(api, what)
  const head = await t.read(0, INDEX_HEADER_BYTES, o.signal).catch((err: Error) => { throw new LazyMountError(`${what}: cannot read a chunk index (make one with guoce index and publish it next to the image): ${err.message}`) })
  const count = head.readUInt32LE(28)
  if (count > MAX_INDEX_CHUNKS) parseIndex(head, what) // throws the parser's own message
  const size = INDEX_HEADER_BYTES + count * INDEX_ENTRY_BYTES
  if (t.total() !== size) parseIndex(Buffer.concat([head, Buffer.alloc(Math.max(0, Math.min(size, t.total() ?? 0) - INDEX_HEADER_BYTES))]), what) // truncated / trailing
  const rest = count > 0 ? await t.read(INDEX_HEADER_BYTES, size - INDEX_HEADER_BYTES, o.signal) : Buffer.alloc(0)
  const bytes = Buffer.concat([head, rest])
  if (o.indexDigest !== undefined) {
    const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    if (got !== o.indexDigest) throw new IndexMismatchError(`${what}: the index hashes to ${got}, --index-digest names ${o.indexDigest}`)
  }
  return parseIndex(bytes, what)
}

/** Mounts the EROFS image at `url` lazily at `targetDir`; the calling process serves it until `unmount()`. */
export async function osImageMount (url: string, targetDir: string, opts: OsImageMountOptions): Promise<OsImageMount> {
  for (const [k, d] of [['--digest', opts.digest], ['--index-digest', opts.indexDigest]] as const) {
    if (d !== undefined && !DIGEST.test(d)) throw new LazyMountError(`${k} must be sha256:<64 hex>, got "${d}"`)
  }
  const stateDir = resolve(opts.stateDir)
  const state = await claimMount(stateDir, targetDir, `erofs+${url}`, 'image')
  const { id, target, work } = state
  const undos: Array<() => Promise<void>> = []
  const undo = async (): Promise<void> => {
    for (const u of undos.splice(0).reverse()) await u().catch(() => {})
    await undoMounts(stateDir, state)
  }
  try {
    const setup = AbortSignal.timeout(opts.fetchTimeoutMs ?? 60_000)
    const ix = await fetchIndex(opts.daemon, url, { ...(opts.indexDigest !== undefined ? { indexDigest: opts.indexDigest } : {}), signal: setup })
    if (opts.digest !== undefined && fileDigest(ix) !== opts.digest) throw new IndexMismatchError(`${url}${INDEX_SUFFIX} describes ${fileDigest(ix)}, --digest names ${opts.digest}`)
    const key = fileDigest(ix)
    const extents: ChunkExtent[] = Array.from({ length: ix.count }, (_, i) => ({
      device: 1, blkaddr: i, length: ix.lengths[i]!, digest: Buffer.from(chunkDigest(ix, i)), compression: 'none' as const, storedOffset: ix.offsets[i]!, storedLength: ix.lengths[i]!
    }))
    const image = rangedTask(opts.daemon, url)
    const store = await openChunkStore({ dir: opts.chunkDir, ...(opts.chunkQuota !== undefined ? { quota: opts.chunkQuota } : {}) })
    undos.push(async () => { await store.flush() })
    const chunks = chunkReader({
      store,
      source: {
        read: async (_blob, offset, length, signal) => {
          const b = await image.read(offset, length, signal)
          // the size the origin serves now must be the one the index describes (a stale index is refused)
          if (image.total() !== ix.size) throw new IndexMismatchError(`${url} is ${image.total() ?? '?'} bytes, its index describes ${ix.size}`)
          return b
        },
        close: async () => {}
      },
      ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
      ...(opts.fetchAttempts !== undefined ? { fetchAttempts: opts.fetchAttempts } : {}),
      ...(opts.log !== undefined ? { log: opts.log } : {})
    })
    undos.push(async () => { await chunks.close() })
    const counters = { reads: 0, bytesRead: 0, failedReads: 0 }
    const deadlineMs = opts.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS
    /** Index of the first chunk that ends after `pos`. */
    const first = (pos: number): number => {
      let lo = 0; let hi = ix.count
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if (ix.offsets[mid]! + ix.lengths[mid]! <= pos) lo = mid + 1
        else hi = mid
      }
      return lo
    }
    const fill = async (buf: Buffer, pos: number, end: number): Promise<void> => {
      const jobs: Array<Promise<void>> = []
      for (let i = first(pos); i < ix.count && ix.offsets[i]! < end; i++) {
        const start = ix.offsets[i]!
        jobs.push(chunks.read(key, extents[i]!).then(data => {
          const from = Math.max(pos, start)
          const to = Math.min(end, start + ix.lengths[i]!)
          data.copy(buf, from - pos, from - start, to - start)
        }))
      }
      await Promise.all(jobs)
    }
    const epoch = new Date()
    const ops: FuseOps = {
      getattr (path, cb) {
        if (path === '/') { cb(0, { mode: 0o40555, size: 4096, nlink: 2, mtime: epoch, atime: epoch, ctime: epoch }); return }
        if (path !== '/image') { cb(Fuse.ENOENT); return }
        cb(0, { mode: 0o100444, size: ix.size, nlink: 1, mtime: epoch, atime: epoch, ctime: epoch })
      },
      readdir (path, cb) { if (path !== '/') { cb(Fuse.ENOENT); return } cb(0, ['image']) },
      open (path, flags, cb) {
        if (path !== '/image') { cb(Fuse.ENOENT); return }
        if ((flags & 3) !== 0) { cb(Fuse.EACCES); return }
        cb(0, 0)
      },
      release (_path, _fd, cb) { cb(0) },
      read (path, _fd, buf, len, pos, cb) {
        if (path !== '/image') { cb(Fuse.ENOENT); return }
        counters.reads++
        if (pos >= ix.size) { cb(0); return }
        const end = Math.min(ix.size, pos + len)
        answerRead(cb, end - pos, async () => { await fill(buf, pos, end) }, { deadlineMs, counters, ...(opts.log !== undefined ? { log: opts.log } : {}), what: { image: url, pos, len } })
      }
    }
    const fuse = await fuseMount(state.fuse, ops, { fsname: 'guoce-os-image', timeoutMs: deadlineMs + 5_000 })
    undos.push(async () => { await fuse.unmount() })
    const file = join(state.fuse, 'image')
    await mkdir(target, { recursive: true })
    // a regular file as the source: the kernel's file-backed EROFS mount (no loop device)
    await native.mount(file, target, 'erofs', native.constants.MS_RDONLY, null)
    undos.push(async () => { await native.umount2(target, native.constants.MNT_DETACH) })
    let done: Promise<void> | undefined
    return {
      id, target, state, image: file,
      stats: () => ({ server: { ...counters, refused: chunks.refused() }, store: store.stats(), imageBytes: ix.size, chunks: ix.count }),
      unmount: async () => { done ??= undo(); await done }
    }
  } catch (err) {
    await undo()
    throw err
  }
}
