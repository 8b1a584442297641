/*
 * Ownership: a TaskStore owns one directory; a StoredTask owns the file handle of its data file and is
 * shared by the downloader (writes) and the piece server (reads). In-memory `bitmap` says what may be
 * served now (bytes are in the page cache); `durable` says what the state file on disk lists.
 */
import { open, mkdir, chmod, readFile, rename, rm, readdir, stat, type FileHandle } from 'node:fs/promises'
import { LRUCache } from 'lru-cache'
import { dirname, join } from 'node:path'
import { Bitmap, credentialHash, isTaskId, pieceRange, piecePool, type BufferPool, type Lease } from '@guoce/content'
import { NoSpaceError, NotFoundError, InvalidParametersError, type TaskInfo } from '@guoce/interface'

/**
 * Delay between a piece write and the flush that makes it durable (fdatasync of the data file, then the
 * state file rewritten). A crash loses at most this much progress: the pieces are fetched again. Every
 * flush is two fsyncs per task; at 250 ms, 16 peers on one machine flushed 128 times a second
 * (bench/fanout, N = 16: T_all 35.1 and 37.8 s at 2 s against 37.5 and 43.9 s at 250 ms, alternating runs).
 * The last piece flushes at once.
 * @default 2 s
 */
export const FLUSH_DELAY_MS = 2_000

export interface TaskMeta {
  url?: string
  digest?: string
  tag?: string
  headers?: Record<string, string>
  /** the origin's validator the task stands for (part of its id; sent in every register) */
  version?: string
  /** credentialHash of the request (part of its id; sent in every register) */
  credentials?: string
  /** the piece length the request named (TaskRequest.pieceLength; part of its id; sent in every register) */
  pieceLength?: number
}

export interface StoreInit {
  dir: string
  /**
   * Most bytes of task data kept; least recently used tasks that nothing pins are evicted to make room.
   * @default Infinity
   */
  quotaBytes?: number
}

function wrapFsError (err: unknown): Error {
  const e = err as NodeJS.ErrnoException
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new NoSpaceError(`no space left on device: ${e.message}`, { cause: err })
  return e
}

async function atomicWrite (path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`
  // 0600: meta.json holds request headers (credentials); only the store's owner reads these files
  const fh = await open(tmp, 'w', 0o600)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } catch (err) {
    await fh.close().catch(() => {})
    await rm(tmp, { force: true })
    throw wrapFsError(err)
  }
  await fh.close()
  await rename(tmp, path)
}

/*
 * state file: magic "GCS1" | u32be pieceCount | bitmap bytes | for each piece 32 bytes digest (zeros = unknown)
 */
const STATE_MAGIC = 0x47435331

export class StoredTask {
  readonly bitmap: Bitmap
  private durable: Bitmap
  readonly digests: Array<Uint8Array | undefined>
  private flushTimer: NodeJS.Timeout | undefined
  private flushing: Promise<void> = Promise.resolve()
  private closed = false
  private dirty = false

  constructor (
    readonly taskId: string,
    readonly dir: string,
    readonly info: TaskInfo,
    readonly meta: TaskMeta,
    private readonly fh: FileHandle,
    bitmap?: Uint8Array,
    digests?: Array<Uint8Array | undefined>
  ) {
    this.bitmap = new Bitmap(info.pieceCount, bitmap)
    this.durable = new Bitmap(info.pieceCount, bitmap)
    this.digests = digests ?? new Array(info.pieceCount).fill(undefined)
  }

  get complete (): boolean { return this.bitmap.full }
  get dataPath (): string { return join(this.dir, 'data') }
  /** pieces listed in the state file on disk */
  get durableCount (): number { return this.durable.count }

  setDigest (n: number, digest: Uint8Array): void {
    if (n < 0 || n >= this.info.pieceCount) throw new RangeError(`piece ${n} out of range`)
    if (digest.length !== 32) throw new InvalidParametersError('piece digest must be 32 bytes')
    this.digests[n] = Uint8Array.from(digest)
    this.dirty = true
  }

  /** Write a verified piece. The caller verified `data` against `digest` before calling. */
  async writePiece (n: number, data: Uint8Array, digest: Uint8Array): Promise<void> {
    const { start, end } = pieceRange(n, this.info.pieceLength, this.info.contentLength)
    if (data.byteLength !== end - start) throw new InvalidParametersError(`piece ${n} is ${data.byteLength} bytes, expected ${end - start}`)
    if (this.bitmap.has(n)) return
    try {
      let off = 0
      while (off < data.byteLength) {
        const { bytesWritten } = await this.fh.write(data, off, data.byteLength - off, start + off)
        off += bytesWritten
      }
    } catch (err) {
      throw wrapFsError(err)
    }
    this.setDigest(n, digest)
    this.bitmap.set(n)
    this.scheduleFlush()
  }

  async readPiece (n: number): Promise<Uint8Array | null> {
    const lease = await this.leasePiece(n, { acquire: (size: number) => ({ buf: Buffer.allocUnsafe(size), release: () => {} }) })
    return lease?.buf ?? null
  }

  /** Piece `n` read into a buffer from `pool` (piecePool by default); the caller releases it. */
  async leasePiece (n: number, pool: Pick<BufferPool, 'acquire'> = piecePool): Promise<Lease | null> {
    if (!this.bitmap.has(n) || this.closed) return null
    const { start, end } = pieceRange(n, this.info.pieceLength, this.info.contentLength)
    const lease = pool.acquire(end - start)
    const buf = lease.buf
    try {
      let off = 0
      while (off < buf.byteLength) {
        const { bytesRead } = await this.fh.read(buf, off, buf.byteLength - off, start + off)
        if (bytesRead === 0) throw new NotFoundError(`piece ${n} of ${this.taskId} is short on disk`)
        off += bytesRead
      }
    } catch (err) {
      lease.release()
      throw err
    }
    return lease
  }

  /** Read [start, end) of the content; only valid when the covering pieces are held. */
  async read (start: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length)
    let off = 0
    while (off < length) {
      const { bytesRead } = await this.fh.read(buf, off, length - off, start + off)
      if (bytesRead === 0) break
      off += bytesRead
    }
    return buf.subarray(0, off)
  }

  private scheduleFlush (): void {
    this.dirty = true
    if (this.flushTimer != null || this.closed) return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      void this.flush().catch(() => {})
    }, this.bitmap.full ? 0 : FLUSH_DELAY_MS)
    this.flushTimer.unref()
  }

  /** Make every piece written so far durable and list it in the state file. */
  async flush (): Promise<void> {
    this.flushing = this.flushing.catch(() => {}).then(async () => {
      if (!this.dirty) return
      this.dirty = false
      const snapshot = new Bitmap(this.info.pieceCount, this.bitmap.bytes)
      try {
        await this.fh.datasync()
      } catch (err) {
        this.dirty = true
        throw wrapFsError(err)
      }
      await atomicWrite(join(this.dir, 'state'), encodeState(snapshot, this.digests))
      this.durable = snapshot
    })
    return await this.flushing
  }

  async close (): Promise<void> {
    if (this.closed) return
    if (this.flushTimer != null) { clearTimeout(this.flushTimer); this.flushTimer = undefined }
    await this.flush().catch(() => {})
    this.closed = true
    await this.fh.close().catch(() => {})
  }
}

function encodeState (bitmap: Bitmap, digests: Array<Uint8Array | undefined>): Uint8Array {
  const n = bitmap.size
  const out = Buffer.alloc(8 + bitmap.bytes.length + 32 * n)
  out.writeUInt32BE(STATE_MAGIC, 0)
  out.writeUInt32BE(n, 4)
  out.set(bitmap.bytes, 8)
  const base = 8 + bitmap.bytes.length
  for (let i = 0; i < n; i++) {
    const d = digests[i]
    if (d != null) out.set(d, base + 32 * i)
  }
  return out
}

function decodeState (buf: Buffer, pieceCount: number): { bitmap: Uint8Array, digests: Array<Uint8Array | undefined> } | null {
  const bmLen = Math.ceil(pieceCount / 8)
  if (buf.byteLength !== 8 + bmLen + 32 * pieceCount || buf.readUInt32BE(0) !== STATE_MAGIC || buf.readUInt32BE(4) !== pieceCount) return null
  const bitmap = buf.subarray(8, 8 + bmLen)
  const digests: Array<Uint8Array | undefined> = []
  const base = 8 + bmLen
  for (let i = 0; i < pieceCount; i++) {
    const d = buf.subarray(base + 32 * i, base + 32 * (i + 1))
    digests.push(d.every(b => b === 0) ? undefined : Uint8Array.from(d))
  }
  return { bitmap, digests }
}

export class TaskStore {
  private readonly open = new Map<string, Promise<StoredTask | null>>()
  /** task id -> bytes, in recency order (the in-memory index behind quota eviction) */
  // bounded by total size, not a count: a `max` would preallocate that many slots at start-up
  private readonly usage = new LRUCache<string, number>({ maxSize: Number.MAX_SAFE_INTEGER, sizeCalculation: () => 1 })
  private readonly pins = new Map<string, number>()
  private used = 0

  constructor (readonly dir: string, readonly quotaBytes = Infinity) {}

  /** bytes of task data the store accounts for */
  get usedBytes (): number { return this.used }

  /** Keep `taskId` from eviction until unpin (running downloads, open mounts). */
  pin (taskId: string): void { this.pins.set(taskId, (this.pins.get(taskId) ?? 0) + 1) }
  unpin (taskId: string): void {
    const n = (this.pins.get(taskId) ?? 0) - 1
    if (n <= 0) this.pins.delete(taskId); else this.pins.set(taskId, n)
  }

  /** Mark a task as just used. */
  touch (taskId: string): void { this.usage.get(taskId) }

  private account (taskId: string, bytes: number): void {
    const old = this.usage.get(taskId)
    if (old != null) this.used -= old
    this.usage.set(taskId, bytes)
    this.used += bytes
  }

  private forget (taskId: string): void {
    const old = this.usage.get(taskId)
    if (old != null) { this.used -= old; this.usage.delete(taskId) }
  }

  /** Evict least recently used, unpinned tasks until `bytes` more fit under the quota. */
  private async makeRoom (bytes: number, except: string): Promise<void> {
    if (this.used + bytes <= this.quotaBytes) return
    const victims: string[] = []
    let free = this.quotaBytes - this.used
    for (const id of this.usage.rkeys()) {
      if (free >= bytes) break
      if (id === except || this.pins.has(id)) continue
      victims.push(id)
      free += this.usage.peek(id) ?? 0
    }
    if (free < bytes) throw new NoSpaceError(`store quota of ${this.quotaBytes} bytes exceeded: ${bytes} more bytes needed, ${this.used} used by tasks in use`)
    for (const id of victims) await this.remove(id)
  }

  /** Read the sizes of every task on disk into the index, oldest state file first. */
  async scan (): Promise<void> {
    const found: Array<{ id: string, bytes: number, mtime: number }> = []
    for (const id of await this.list()) {
      const dir = this.taskDir(id)
      try {
        const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as { info: TaskInfo }
        const st = await stat(join(dir, 'data'))
        found.push({ id, bytes: meta.info.contentLength, mtime: st.mtimeMs })
      } catch {}
    }
    found.sort((a, b) => a.mtime - b.mtime)
    for (const f of found) this.account(f.id, f.bytes)
  }

  private taskDir (taskId: string): string {
    if (!isTaskId(taskId)) throw new InvalidParametersError(`bad task id "${taskId}"`)
    return join(this.dir, 'tasks', taskId.slice(0, 2), taskId)
  }

  /** An existing task (shared instance), or null. */
  async get (taskId: string): Promise<StoredTask | null> {
    this.touch(taskId)
    let p = this.open.get(taskId)
    if (p == null) {
      p = this.load(taskId)
      this.open.set(taskId, p)
      p.then(t => { if (t == null) this.open.delete(taskId) }, () => { this.open.delete(taskId) })
    }
    return await p
  }

  private async load (taskId: string): Promise<StoredTask | null> {
    const dir = this.taskDir(taskId)
    let meta: { info: TaskInfo, meta: TaskMeta }
    try {
      meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8'))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
    let state: ReturnType<typeof decodeState> = null
    try {
      state = decodeState(await readFile(join(dir, 'state')), meta.info.pieceCount)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const fh = await open(join(dir, 'data'), 'r+')
    return new StoredTask(taskId, dir, meta.info, meta.meta, fh, state?.bitmap, state?.digests)
  }

  /** Create (or open, when the layout matches) a task. A task with a different layout is replaced. */
  async create (taskId: string, info: TaskInfo, meta: TaskMeta = {}): Promise<StoredTask> {
    const existing = await this.get(taskId)
    if (existing != null) {
      if (existing.info.contentLength === info.contentLength && existing.info.pieceLength === info.pieceLength) return existing
      await this.remove(taskId)
    }
    const dir = this.taskDir(taskId)
    await this.makeRoom(info.contentLength, taskId)
    this.account(taskId, info.contentLength)
    // Other local users may read a task's data file (a same-host `guoce get` copies it as its own user),
    // but not list task ids (tasks/ and its prefixes are 0711), and never a task fetched with
    // credentials (its directory and data are the store owner's only).
    const shared = credentialHash({ url: meta.url ?? 'http://localhost/', headers: meta.headers }) == null
    const p = (async () => {
      await mkdir(dirname(dir), { recursive: true, mode: 0o711 })
      await mkdir(dir, { recursive: true, mode: shared ? 0o755 : 0o700 })
      const fh = await open(join(dir, 'data'), 'w+', shared ? 0o644 : 0o600)
      try {
        await fh.truncate(info.contentLength)
        await atomicWrite(join(dir, 'meta.json'), JSON.stringify({ info: { ...info, taskId }, meta }))
      } catch (err) {
        await fh.close().catch(() => {})
        await rm(dir, { recursive: true, force: true })
        this.forget(taskId)
        throw wrapFsError(err)
      }
      return new StoredTask(taskId, dir, { ...info, taskId }, meta, fh)
    })()
    this.open.set(taskId, p)
    p.catch(() => { this.open.delete(taskId) })
    return await p
  }

  async remove (taskId: string): Promise<void> {
    const t = await this.open.get(taskId)?.catch(() => null)
    this.open.delete(taskId)
    this.forget(taskId)
    await t?.close()
    await rm(this.taskDir(taskId), { recursive: true, force: true })
  }

  /** A held piece and its digest (the shape a piece server serves), or null. */
  /** Piece `n` of a task with its digest, in a pooled buffer: call `release` once it has been sent. */
  async getPiece (taskId: string, n: number): Promise<{ data: Uint8Array, digest: Uint8Array, release: () => void } | null> {
    const t = await this.get(taskId)
    const digest = t?.digests[n]
    if (t == null || digest == null) return null
    const lease = await t.leasePiece(n)
    return lease == null ? null : { data: lease.buf, digest, release: lease.release }
  }

  /** Ids of every task on disk. */
  async list (): Promise<string[]> {
    const out: string[] = []
    const root = join(this.dir, 'tasks')
    let prefixes: string[]
    try { prefixes = await readdir(root) } catch { return out }
    for (const p of prefixes) {
      for (const id of await readdir(join(root, p)).catch(() => [] as string[])) if (isTaskId(id)) out.push(id)
    }
    return out
  }

  async close (): Promise<void> {
    const all = [...this.open.values()]
    this.open.clear()
    for (const p of all) await (await p.catch(() => null))?.close()
  }
}

export async function openStore (init: StoreInit): Promise<TaskStore> {
  // searchable, not listable: task ids (of credentialed tasks above all) are not for other users to read
  await mkdir(join(init.dir, 'tasks'), { recursive: true, mode: 0o711 })
  await chmod(join(init.dir, 'tasks'), 0o711)
  const store = new TaskStore(init.dir, init.quotaBytes)
  await store.scan()
  return store
}
