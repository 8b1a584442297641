/**
 * Chunking and the data blob.
 *
 * A file's bytes are cut into fixed chunks (the chunk size, a power of two). Each chunk is
 * - a hole if all zero (stored nowhere, read back as zeros),
 * - else identified by its sha256; if that digest is already in this blob or in the chunk
 *   dictionary (earlier layers, other images) the chunk is referenced there,
 * - else given the next 4 KiB-aligned address of this blob's *uncompressed view* (what EROFS chunk indexes
 *   address) and *stored* in the blob file compressed (zstd) or as is, packed back to back (chunks.ts).
 *
 * A chunk shorter than the chunk size (a small file, or a file's last chunk) is not stored alone: it joins the
 * open *pack*, a view extent of at most one chunk size that holds such chunks back to back (each at a 4 KiB
 * boundary). The pack is one chunk table entry: compressed, fetched, verified and cached as one. Compressing
 * thousands of small files together instead of one by one is what brings a converted rootfs under its OCI gzip
 * size (doc/FORMAT.md, "Packed small chunks"). A pack reserves a whole chunk size of view when it opens (later
 * full chunks are placed after it); what it does not use stays a hole of the view that no entry covers.
 *
 * Compression runs on worker threads (compress.ts), several chunks at a time (bounded by COMPRESS_AHEAD bytes),
 * while the main thread goes on parsing and hashing; results are stored in the order the chunks came, so a layer
 * always converts to the same bytes.
 *
 * Who owns what: a BlobWriter owns its compression workers until `close()` (always called, also on failure);
 * the caller owns the file handle;
 * the ChunkDict is owned by the caller and only read here (convertLayer adds the finished blob).
 */
import { createHash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { DEFAULT_ZSTD_LEVEL, MAX_PACK_CHUNKS, type ChunkCompression, type ChunkCompressionOptions } from './chunks.js'
import { CompressorPool } from './compress.js'
import { BLOCK_SIZE } from './constants.js'
import type { ChunkRef } from './tree.js'

/** Data segments of a sparse file (sorted, not overlapping) and its full size. */
export interface SparseMap { size: number, map: Array<{ offset: number, length: number }> }

/** Where a chunk is stored in its blob file. */
export interface StoredExtent { compression: ChunkCompression, storedOffset: number, storedLength: number }

/**
 * A chunk known to a dictionary: which blob (1-based index in `blobs`), where in its view, how long, where stored.
 * A chunk stored in a pack has `pack`, the chunk table entry that holds it (the stored extent is the pack's).
 */
export interface DictChunk extends StoredExtent { blob: number, blkaddr: number, length: number, digest: Buffer, pack?: { blkaddr: number, length: number, digest: Buffer } }

/** A blob known to a dictionary: its digest (of the stored bytes), view size in blocks, stored size in bytes. */
export interface DictBlob { digest: string, blocks: number, storedSize: number }

/** Chunks already stored somewhere, by sha256 hex. */
export interface ChunkDict {
  blobs: DictBlob[]
  chunks: Map<string, DictChunk>
}

export function createChunkDict (): ChunkDict {
  return { blobs: [], chunks: new Map() }
}

export interface ChunkStats {
  /** Non-hole chunks in all files. */
  chunks: number
  /** All-zero chunks stored as holes. */
  holes: number
  /** Chunks stored in this layer's blob. */
  unique: number
  /** Chunks found earlier in this same blob. */
  dedupInLayer: number
  /** Chunks found in the dictionary (earlier layers or chunk-dict images). */
  dedupFromDict: number
  /** Bytes of file data (sum of file sizes). */
  fileBytes: number
  /** Uncompressed bytes of the entries stored in this layer's blob (whole chunks, and packs with the block padding between their chunks). */
  storedBytes: number
  /** Bytes those chunks take in the blob file (after compression). */
  compressedBytes: number
  /** Chunk table entries stored zstd-compressed (the others are stored as is: compression did not pay). */
  compressedChunks: number
  /** Short chunks stored in packs (counted in `unique` too). */
  packedChunks: number
  /** Packs stored. */
  packs: number
}

/** A chunk table entry of this blob: a whole chunk stored alone, or a pack of short chunks. */
interface OwnEntry { blkaddr: number, length: number, digest: Buffer, stored?: StoredExtent }
/** A file chunk stored in this blob, and the entry that holds it (itself, or its pack). */
interface OwnChunk { blkaddr: number, length: number, digest: Buffer, entry: OwnEntry }
/**
 * The pack being filled: its entry, its view bytes, the offset where the next short chunk goes, and every ref
 * handed out to its chunks (rewritten when the whole pack turns out to be in the dictionary already).
 */
interface OpenPack { entry: OwnEntry, buf: Buffer, end: number, next: number, refs: ChunkRef[], members: string[] }

/** Blob bytes queued before a write is issued. */
const WRITE_BATCH = 8 * 1024 * 1024
/** Uncompressed bytes handed to the compressor ahead of the store (at least one chunk). */
const COMPRESS_AHEAD = 16 * 1024 * 1024

export class BlobWriter {
  readonly chunkSize: number
  /** Longest pack of short chunks (a multiple of BLOCK_SIZE, at least the chunk size). */
  readonly packSize: number
  /** Blob ordinal of this blob in device numbering during conversion: dict.blobs.length + 1. */
  readonly ownOrdinal: number
  private readonly fh: FileHandle
  private readonly dict: ChunkDict | undefined
  private readonly own = new Map<string, OwnChunk>()
  /** Entry holding each chunk's view address (whole chunks and pack members). */
  private readonly entryAt = new Map<number, OwnEntry>()
  private readonly entries: OwnEntry[] = []
  /**
   * The open packs: [0] for short chunks, [1] for the short chunks a prefetch list names (`addFile`'s `hot`),
   * so that what a start-up reads is packed with what it reads and not with its neighbours in the tar.
   */
  private readonly packs: [OpenPack | undefined, OpenPack | undefined] = [undefined, undefined]
  /** The chunk indexes of the file being added that are hot (see `packs`). */
  private hot: ReadonlySet<number> | undefined
  /** Short chunks whose whole pack was found in the dictionary: where they are there. */
  private readonly inDict = new Map<string, DictChunk>()
  private readonly hash = createHash('sha256')
  private readonly buf: Buffer
  private readonly zero: Buffer
  private readonly pool: CompressorPool | undefined
  private fill = 0
  /** Bytes of this blob's uncompressed view (always a multiple of BLOCK_SIZE). */
  size = 0
  /** Bytes of the blob file (stored chunks, back to back). */
  storedSize = 0
  readonly stats: ChunkStats = { chunks: 0, holes: 0, unique: 0, dedupInLayer: 0, dedupFromDict: 0, fileBytes: 0, storedBytes: 0, compressedBytes: 0, compressedChunks: 0, packedChunks: 0, packs: 0 }

  constructor (fh: FileHandle, chunkSize: number, dict?: ChunkDict, compression: ChunkCompressionOptions = {}, packSize?: number) {
    this.fh = fh
    this.chunkSize = chunkSize
    this.packSize = packSize ?? chunkSize
    this.dict = dict
    this.pool = (compression.compression ?? 'zstd') === 'zstd' ? new CompressorPool({ level: compression.level ?? DEFAULT_ZSTD_LEVEL }) : undefined
    this.ownOrdinal = (dict?.blobs.length ?? 0) + 1
    this.buf = Buffer.allocUnsafe(chunkSize)
    this.zero = Buffer.alloc(chunkSize)
  }

  /**
   * Chunks a file's bytes; returns one ref per chunk (null for holes). With `sparse`, `data` holds only
   * the listed segments (as a sparse tar member stores them) and the gaps up to `sparse.size` are zeros.
   */
  async addFile (data: AsyncIterable<Buffer>, size: number, sparse?: SparseMap, hot?: ReadonlySet<number>): Promise<Array<ChunkRef | null>> {
    const refs: Array<ChunkRef | null> = []
    this.fill = 0
    this.hot = hot
    let seen = 0
    if (sparse === undefined) {
      for await (const slice of data) {
        seen += slice.length
        await this.put(slice, refs)
      }
      if (seen !== size) throw new Error(`internal: file data ${seen} != ${size}`)
      this.stats.fileBytes += size
    } else {
      const it = data[Symbol.asyncIterator]()
      let rest: Buffer | undefined
      let pos = 0
      for (const seg of sparse.map) {
        await this.zeros(seg.offset - pos, refs)
        let left = seg.length
        while (left > 0) {
          if (rest === undefined || rest.length === 0) {
            const r = await it.next()
            if (r.done === true) throw new Error('internal: sparse data shorter than its map')
            rest = r.value
          }
          const part = rest.subarray(0, left)
          rest = rest.subarray(part.length)
          seen += part.length
          left -= part.length
          await this.put(part, refs)
        }
        pos = seg.offset + seg.length
      }
      await this.zeros(sparse.size - pos, refs)
      if (seen !== size) throw new Error(`internal: sparse data ${seen} != ${size}`)
      this.stats.fileBytes += sparse.size
    }
    if (this.fill > 0) {
      refs.push(await this.chunk(this.buf.subarray(0, this.fill), refs.length))
      this.fill = 0
    }
    this.hot = undefined
    return refs
  }

  private async put (slice: Buffer, refs: Array<ChunkRef | null>): Promise<void> {
    const cs = this.chunkSize
    let pos = 0
    while (pos < slice.length) {
      if (this.fill === 0 && slice.length - pos >= cs) {
        refs.push(await this.chunk(slice.subarray(pos, pos + cs), refs.length))
        pos += cs
        continue
      }
      const take = Math.min(cs - this.fill, slice.length - pos)
      slice.copy(this.buf, this.fill, pos, pos + take)
      this.fill += take
      pos += take
      if (this.fill === cs) {
        refs.push(await this.chunk(this.buf, refs.length))
        this.fill = 0
      }
    }
  }

  /** n zero bytes: whole chunks become holes without touching memory. */
  private async zeros (n: number, refs: Array<ChunkRef | null>): Promise<void> {
    const cs = this.chunkSize
    while (n > 0) {
      if (this.fill === 0 && n >= cs) {
        const whole = Math.floor(n / cs)
        for (let i = 0; i < whole; i++) refs.push(null)
        this.stats.holes += whole
        n -= whole * cs
        continue
      }
      const k = Math.min(cs - this.fill, n)
      this.buf.fill(0, this.fill, this.fill + k)
      this.fill += k
      n -= k
      if (this.fill === cs) {
        refs.push(await this.chunk(this.buf, refs.length))
        this.fill = 0
      }
    }
  }

  /** Stores (or finds) chunk number `index` of the file being added. */
  private async chunk (c: Buffer, index: number): Promise<ChunkRef | null> {
    if (c.equals(this.zero.subarray(0, c.length))) {
      this.stats.holes++
      return null
    }
    this.stats.chunks++
    const digest = createHash('sha256').update(c).digest()
    const hex = digest.toString('hex')
    const mine = this.own.get(hex)
    if (mine !== undefined && mine.length === c.length) {
      this.stats.dedupInLayer++
      const ref = { device: this.ownOrdinal, blkaddr: mine.blkaddr }
      for (const p of this.packs) if (mine.entry === p?.entry) p.refs.push(ref)
      return ref
    }
    const moved = this.inDict.get(hex)
    if (moved !== undefined && moved.length === c.length) {
      this.stats.dedupFromDict++
      return { device: moved.blob, blkaddr: moved.blkaddr }
    }
    const known = this.dict?.chunks.get(hex)
    // a chunk in a dictionary pack longer than this table may declare is stored again
    if (known !== undefined && known.length === c.length && (known.pack?.length ?? 0) <= this.chunkSize * MAX_PACK_CHUNKS) {
      this.stats.dedupFromDict++
      return { device: known.blob, blkaddr: known.blkaddr }
    }
    this.stats.unique++
    if (c.length < this.chunkSize) return await this.addToPack(c, digest, hex, this.hot?.has(index) === true ? 1 : 0)
    this.stats.storedBytes += c.length
    const blkaddr = this.size / BLOCK_SIZE
    const pad = (BLOCK_SIZE - (c.length % BLOCK_SIZE)) % BLOCK_SIZE
    const entry: OwnEntry = { blkaddr, length: c.length, digest }
    this.size += c.length + pad
    this.remember(hex, { blkaddr, length: c.length, digest, entry })
    await this.store(entry, c)
    return { device: this.ownOrdinal, blkaddr }
  }

  private remember (hex: string, chunk: OwnChunk): void {
    this.own.set(hex, chunk)
    this.entryAt.set(chunk.blkaddr, chunk.entry)
  }

  /** Hands an entry's bytes to the compressor (the chunk may be a reused buffer: the compressor copies it). */
  private async store (entry: OwnEntry, c: Buffer): Promise<void> {
    const encoded = this.pool !== undefined
      ? this.pool.compress(c)
      : Promise.resolve({ compression: 'none' as const, bytes: Buffer.from(c) })
    encoded.catch(() => {}) // surfaced when stored
    this.entries.push(entry)
    this.ahead.push({ own: entry, encoded })
    this.aheadBytes += c.length
    while (this.aheadBytes > COMPRESS_AHEAD && this.ahead.length > 1) await this.storeOldest()
  }

  /** Puts a short chunk in open pack `which` (closing it first when the chunk does not fit, opening one when none is). */
  private async addToPack (c: Buffer, digest: Buffer, hex: string, which: 0 | 1): Promise<ChunkRef> {
    const open = this.packs[which]
    if (open !== undefined && open.next + c.length > this.packSize) await this.closePack(which)
    let p = this.packs[which]
    if (p === undefined) {
      const entry: OwnEntry = { blkaddr: this.size / BLOCK_SIZE, length: 0, digest: Buffer.alloc(0) }
      p = this.packs[which] = { entry, buf: Buffer.alloc(this.packSize), end: 0, next: 0, refs: [], members: [] }
      this.size += this.packSize // reserved; given back at close when nothing was placed after it
    }
    const blkaddr = p.entry.blkaddr + p.next / BLOCK_SIZE
    c.copy(p.buf, p.next)
    p.end = p.next + c.length
    p.next = Math.ceil(p.end / BLOCK_SIZE) * BLOCK_SIZE
    this.remember(hex, { blkaddr, length: c.length, digest, entry: p.entry })
    this.stats.packedChunks++
    const ref = { device: this.ownOrdinal, blkaddr }
    p.refs.push(ref)
    p.members.push(hex)
    return ref
  }

  private async closePack (which: 0 | 1): Promise<void> {
    const p = this.packs[which]
    if (p === undefined) return
    this.packs[which] = undefined
    const bytes = p.buf.subarray(0, p.end)
    p.entry.length = p.end
    p.entry.digest = createHash('sha256').update(bytes).digest()
    const reservedEnd = p.entry.blkaddr * BLOCK_SIZE + this.packSize
    const known = this.dict?.chunks.get(p.entry.digest.toString('hex'))
    if (known !== undefined && known.length === p.end && known.pack === undefined) {
      // the same pack is stored in a dictionary blob (the same short chunks in the same order, as in an image
      // converted before): point every chunk of this pack there, and store nothing
      if (this.size === reservedEnd) this.size = p.entry.blkaddr * BLOCK_SIZE
      for (const r of p.refs) { r.blkaddr = known.blkaddr + (r.blkaddr - p.entry.blkaddr); r.device = known.blob }
      for (const hex of p.members) {
        const m = this.own.get(hex)!
        this.own.delete(hex)
        this.entryAt.delete(m.blkaddr)
        const { blob, compression, storedOffset, storedLength } = known
        this.inDict.set(hex, { blob, blkaddr: known.blkaddr + (m.blkaddr - p.entry.blkaddr), length: m.length, digest: m.digest, compression, storedOffset, storedLength, pack: { blkaddr: known.blkaddr, length: known.length, digest: known.digest } })
        this.stats.unique--
        this.stats.packedChunks--
        this.stats.dedupFromDict++
      }
      return
    }
    if (this.size === reservedEnd) this.size = p.entry.blkaddr * BLOCK_SIZE + p.next
    this.stats.packs++
    this.stats.storedBytes += p.end
    await this.store(p.entry, bytes)
  }

  private ahead: Array<{ own: OwnEntry, encoded: Promise<{ compression: ChunkCompression, bytes: Buffer }> }> = []
  private aheadBytes = 0

  /** Stores the oldest chunk handed to the compressor: appends its stored bytes to the blob file. */
  private async storeOldest (): Promise<void> {
    const next = this.ahead.shift()!
    this.aheadBytes -= next.own.length
    const { compression, bytes } = await next.encoded
    next.own.stored = { compression, storedOffset: this.storedSize, storedLength: bytes.length }
    this.storedSize += bytes.length
    this.stats.compressedBytes += bytes.length
    if (compression !== 'none') this.stats.compressedChunks++
    this.hash.update(bytes)
    this.queue(bytes)
    if (this.pendingBytes >= WRITE_BATCH) await this.flushPending()
  }

  private pending: Buffer[] = []
  private pendingBytes = 0
  private inflight: Promise<void> = Promise.resolve()

  private queue (b: Buffer): void {
    this.pending.push(b)
    this.pendingBytes += b.length
  }

  /** Starts writing the queued buffers after the previous batch (one batch in flight, so writes overlap hashing). */
  private async flushPending (): Promise<void> {
    await this.inflight
    const bufs = this.pending
    this.pending = []
    this.pendingBytes = 0
    const write = this.writeAll(bufs)
    write.catch(() => {}) // surfaced by the next flush or by flush()
    this.inflight = write
  }

  private async writeAll (bufs: Buffer[]): Promise<void> {
    let rest = bufs
    while (rest.length > 0) {
      const batch = rest.slice(0, 512) // IOV_MAX is 1024
      rest = rest.slice(512)
      let { bytesWritten } = await this.fh.writev(batch)
      const total = batch.reduce((s, b) => s + b.length, 0)
      // short writes: finish the remainder
      let i = 0
      while (bytesWritten < total) {
        let skip = bytesWritten
        const left: Buffer[] = []
        for (const b of batch) {
          if (skip >= b.length) { skip -= b.length; continue }
          left.push(b.subarray(skip)); skip = 0
        }
        const r = await this.fh.writev(left)
        bytesWritten += r.bytesWritten
        if (++i > 1000) throw new Error('blob write makes no progress')
      }
    }
  }

  /** Stores and writes everything queued; call before closing the file. */
  async flush (): Promise<void> {
    // the pack opened last first: its unused reserved view can be given back
    const last = (this.packs[1]?.entry.blkaddr ?? -1) > (this.packs[0]?.entry.blkaddr ?? -1) ? 1 : 0
    await this.closePack(last)
    await this.closePack(last === 1 ? 0 : 1)
    while (this.ahead.length > 0) await this.storeOldest()
    await this.flushPending()
    await this.inflight
  }

  /** Stops the compression workers. */
  async close (): Promise<void> {
    await this.pool?.close()
  }

  /** The chunk table entry holding the chunk at `blkaddr` of this blob (the chunk's own, or its pack). */
  entryOf (blkaddr: number): Required<OwnEntry> | undefined {
    return this.entryAt.get(blkaddr) as Required<OwnEntry> | undefined
  }

  /** Every chunk stored in this blob (pack members too), with the entry that holds it; after flush(). */
  ownChunks (): Array<OwnChunk & { entry: Required<OwnEntry> }> {
    return [...this.own.values()] as Array<OwnChunk & { entry: Required<OwnEntry> }>
  }

  /** Short chunks found in the dictionary as a whole pack (convertLayer adds them to the dictionary for later layers). */
  foundInDict (): Map<string, DictChunk> {
    return this.inDict
  }

  /** sha256 hex of the blob's bytes. */
  digest (): string {
    return this.hash.copy().digest('hex')
  }
}
