/**
 * The node chunk store: verified chunks by sha256, shared by every image, layer and mount on the node
 * (one directory, `<dir>/<hex[0:2]>/<hex>`; any process that serves a mount uses the same directory).
 *
 * Who owns what: a ChunkStore owns its in-memory index (lru-cache, least recently used first) and the
 * files it wrote or found at open (a chunk another process stored is found on disk at its first read); another
 * process may evict a file under it, which is only a miss. A chunk
 * is *pinned* while a read uses it and while a mount pins it (`pin`/`unpin`, counted): eviction past the
 * quota skips pinned chunks. Every chunk is verified before use: a file read back from disk is re-hashed
 * (a mismatch deletes it and counts as a miss); a fetched chunk comes through the caller's `fetch`, which
 * must verify it (decodeChunk) before it is stored. Two reads of one chunk share one fetch (single-flight).
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LRUCache } from 'lru-cache'
import { DEFAULT_CHUNK_STORE_QUOTA, DEFAULT_MEMORY_CACHE, MAX_PENDING_WRITES } from './constants.js'

export interface ChunkStoreInit {
  dir: string
  /** Bytes kept on disk (@default DEFAULT_CHUNK_STORE_QUOTA). */
  quota?: number
  /** Bytes of verified chunks kept in memory (@default DEFAULT_MEMORY_CACHE). */
  memory?: number
}

export interface ChunkStoreStats {
  /** Reads answered from memory or disk. */
  hits: number
  /** Fetches started (one per chunk however many readers waited on it). */
  fetches: number
  /** Bytes of chunks fetched and stored. */
  fetchedBytes: number
  /** Files on disk that did not hash to their name: deleted, fetched again. */
  corrupt: number
  /** Chunks evicted past the quota. */
  evicted: number
  /** Bytes on disk under this store's index. */
  bytes: number
}

export interface ChunkStore {
  readonly dir: string
  /** The chunk with this sha256 and length: from memory, disk, or one shared call of `fetch` (verified by it). */
  get: (digest: Buffer, length: number, fetch: () => Promise<Buffer>) => Promise<Buffer>
  /** True when the chunk is on disk (no verification). */
  has: (digest: Buffer) => boolean
  pin: (digest: Buffer) => void
  unpin: (digest: Buffer) => void
  stats: () => ChunkStoreStats
  /** Waits for the chunks handed to readers to be on disk. */
  flush: () => Promise<void>
}

const HEX = /^[0-9a-f]{64}$/

/** Opens (creates) the chunk store in `dir`, indexing the chunks already there. */
export async function openChunkStore (init: ChunkStoreInit): Promise<ChunkStore> {
  const store = new DiskChunkStore(init)
  await store.open()
  return store
}

class DiskChunkStore implements ChunkStore {
  readonly dir: string
  private readonly quota: number
  /** hex -> bytes on disk; order = recency. Sized but never full: eviction is ours (it skips pinned chunks). */
  private readonly index = new LRUCache<string, number>({ maxSize: Number.MAX_SAFE_INTEGER, sizeCalculation: n => Math.max(1, n) })
  private readonly memory: LRUCache<string, Buffer>
  private readonly pins = new Map<string, number>()
  private readonly inflight = new Map<string, Promise<Buffer>>()
  private readonly writes = new Set<Promise<void>>()
  /** Fan-out directories known to exist (one mkdir each, not one per chunk). */
  private readonly subdirs = new Set<string>()
  private bytes = 0
  private readonly counters = { hits: 0, fetches: 0, fetchedBytes: 0, corrupt: 0, evicted: 0 }

  constructor (init: ChunkStoreInit) {
    this.dir = init.dir
    this.quota = init.quota ?? DEFAULT_CHUNK_STORE_QUOTA
    this.memory = new LRUCache<string, Buffer>({ maxSize: Math.max(1, init.memory ?? DEFAULT_MEMORY_CACHE), sizeCalculation: b => Math.max(1, b.length) })
  }

  async open (): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    const found: Array<{ hex: string, size: number, mtime: number }> = []
    for (const sub of await readdir(this.dir)) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue
      for (const name of await readdir(join(this.dir, sub))) {
        const p = join(this.dir, sub, name)
        if (!HEX.test(name) || name.slice(0, 2) !== sub) { await rm(p, { force: true }); continue } // temp files of a killed writer
        const s = await stat(p).catch(() => null)
        if (s?.isFile() === true) found.push({ hex: name, size: s.size, mtime: s.mtimeMs })
      }
    }
    // oldest first, so the most recently written are the most recently used
    found.sort((a, b) => a.mtime - b.mtime)
    for (const f of found) { this.index.set(f.hex, f.size); this.bytes += f.size }
    await this.evict()
  }

  private path (hex: string): string { return join(this.dir, hex.slice(0, 2), hex) }

  has (digest: Buffer): boolean { return this.index.has(digest.toString('hex')) }

  pin (digest: Buffer): void {
    const hex = digest.toString('hex')
    this.pins.set(hex, (this.pins.get(hex) ?? 0) + 1)
  }

  unpin (digest: Buffer): void {
    const hex = digest.toString('hex')
    const n = (this.pins.get(hex) ?? 0) - 1
    if (n > 0) this.pins.set(hex, n)
    else this.pins.delete(hex)
  }

  stats (): ChunkStoreStats { return { ...this.counters, bytes: this.bytes } }

  async flush (): Promise<void> { while (this.writes.size > 0) await Promise.all([...this.writes]) }

  async get (digest: Buffer, length: number, fetch: () => Promise<Buffer>): Promise<Buffer> {
    const hex = digest.toString('hex')
    const mem = this.memory.get(hex)
    if (mem !== undefined && mem.length === length) { this.counters.hits++; this.index.get(hex); return mem }
    const running = this.inflight.get(hex)
    if (running !== undefined) return await running
    const p = this.load(hex, digest, length, fetch)
    this.inflight.set(hex, p)
    try {
      return await p
    } finally {
      this.inflight.delete(hex)
    }
  }

  private async load (hex: string, digest: Buffer, length: number, fetch: () => Promise<Buffer>): Promise<Buffer> {
    this.pin(digest)
    try {
      // not indexed may still be on disk: another process (a pull, another mount) stored it
      const disk = await readFile(this.path(hex)).catch(() => null)
      if (disk !== null && disk.length === length && createHash('sha256').update(disk).digest().equals(digest)) {
        if (!this.index.has(hex)) { this.bytes += disk.length; this.index.set(hex, disk.length) }
        this.index.get(hex) // recency
        this.counters.hits++
        this.memory.set(hex, disk)
        await this.evict()
        return disk
      }
      if (disk !== null || this.index.has(hex)) {
        // corrupt on disk, or gone (evicted by another process): drop it and fetch again
        if (disk !== null) this.counters.corrupt++
        this.forget(hex)
        await rm(this.path(hex), { force: true })
      }
      this.counters.fetches++
      const b = await fetch()
      if (b.length !== length) throw new Error(`internal: fetched chunk ${hex} has ${b.length} bytes, expected ${length}`)
      this.counters.fetchedBytes += b.length
      this.memory.set(hex, b)
      // the reader gets the verified chunk now; it reaches the disk behind it (a full disk costs a later
      // refetch, not this read). Past MAX_PENDING_WRITES waiting writes, a read waits for its own.
      const write = this.put(hex, b).catch(() => {}).finally(() => { this.writes.delete(write) })
      this.writes.add(write)
      if (this.writes.size > MAX_PENDING_WRITES) await write
      return b
    } finally {
      this.unpin(digest)
    }
  }

  /** Writes a verified chunk: temp file then rename, so a reader never sees a partial chunk under its name. */
  private async put (hex: string, b: Buffer): Promise<void> {
    if (b.length > this.quota) return
    const p = this.path(hex)
    const sub = hex.slice(0, 2)
    if (!this.subdirs.has(sub)) { await mkdir(join(this.dir, sub), { recursive: true }); this.subdirs.add(sub) }
    const tmp = `${p}.${randomBytes(6).toString('hex')}.tmp`
    try {
      await writeFile(tmp, b)
      await rename(tmp, p)
    } catch (err) {
      await rm(tmp, { force: true })
      throw err
    }
    if (!this.index.has(hex)) this.bytes += b.length
    this.index.set(hex, b.length)
    await this.evict()
  }

  private forget (hex: string): void {
    const n = this.index.get(hex)
    if (n !== undefined) { this.bytes -= n; this.index.delete(hex) }
  }

  /** Least recently used first, skipping pinned chunks, until the store is within its quota. */
  private async evict (): Promise<void> {
    if (this.bytes <= this.quota) return
    const victims: string[] = []
    let over = this.bytes - this.quota
    for (const hex of this.index.rkeys()) {
      if (over <= 0) break
      if (this.pins.has(hex)) continue
      victims.push(hex)
      over -= this.index.peek(hex) ?? 0
    }
    for (const hex of victims) {
      this.forget(hex)
      this.memory.delete(hex)
      this.counters.evicted++
      await rm(this.path(hex), { force: true })
    }
  }
}
