/**
 * The chunk table: the map from a blob's *uncompressed view* (what the EROFS device table and chunk indexes
 * address, what the kernel reads) to each chunk's *stored extent* in the blob file (the OCI blob, whose digest
 * is the sha256 of its stored bytes). doc/FORMAT.md has the byte layout of both versions:
 *
 * - v1: chunks stored uncompressed at their view address (the blob file *is* the view);
 * - v2: each chunk stored zstd-compressed, or as is when compression does not pay, packed back to back;
 *   a per-device stored size bounds every extent.
 * - v3: the bytes of v2; an entry may also be a *pack* of short chunks (several files' chunks back to back, each
 *   at a block boundary), so a file chunk's block address may fall inside an entry: find it with extentAt().
 *
 * Everything here treats the metadata image and the stored bytes as hostile: readChunkTable() bounds every
 * count and extent before allocating and rejects overlaps; decodeChunk() bounds decompression to the chunk's
 * length and verifies its sha256. materializeBlob() expands a stored blob into its view (for `fsck.erofs`,
 * `guoce image mount` of local images and tests: the kernel mounts the view with `device=`).
 *
 * ```ts
 * const t = await readChunkTable('layer.erofs')          // validated, sorted by (device, blkaddr)
 * const e = t.entries[0]!
 * const stored = readRange(blobFileOf(e.device), e.storedOffset, e.storedLength)
 * const bytes = decodeChunk(e, stored)                   // uncompressed, sha256-verified
 * ```
 */
import { createHash, randomBytes } from 'node:crypto'
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises'
import { zstdDecompress, zstdDecompressSync } from 'node:zlib'
import { promisify } from 'node:util'
import { BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from './constants.js'
import { ErofsReader } from './erofs/reader.js'
import { ChunkDigestMismatchError, CorruptImageError } from './errors.js'

export type ChunkCompression = 'none' | 'zstd' | 'lz4'

export interface ChunkExtent {
  /** 1-based slot in the metadata image's device table. */
  device: number
  /** Block address (4 KiB blocks) in that blob's uncompressed view, as EROFS chunk indexes hold it. */
  blkaddr: number
  /** Uncompressed bytes (chunk size, or less for a file's last chunk). */
  length: number
  /** sha256 of the uncompressed bytes. */
  digest: Buffer
  compression: ChunkCompression
  /** Byte offset of the stored bytes in the blob file (the OCI blob). */
  storedOffset: number
  /** Stored bytes. */
  storedLength: number
}

export interface ChunkTable {
  version: number
  chunkSize: number
  /** Longest entry (uncompressed bytes): the chunk size, or (v3) the pack size when larger. Bounds every decode. */
  maxEntry: number
  /** Sorted by (device, blkaddr); views do not overlap, stored extents do not overlap. */
  entries: ChunkExtent[]
  /** Bytes of each device's blob file (index = device - 1): v2 records them, v1 blobs are their view. */
  storedSizes?: number[]
}

export const CHUNK_TABLE_MAGIC = 'GUOCECT1'
export const CHUNK_TABLE_HEADER = 32
/** v1 entry: device, blkaddr, length, sha256. */
export const CHUNK_TABLE_ENTRY_V1 = 48
/** v2 entry: device, compression, blkaddr, length, stored length, stored offset, sha256. */
export const CHUNK_TABLE_ENTRY_V2 = 56
/** v2: one stored size (u64) per device after the header. */
export const CHUNK_TABLE_DEVICE_V2 = 8
/** Longest pack a v3 table may declare, as a multiple of its chunk size (bounds a decode's memory). */
export const MAX_PACK_CHUNKS = 16

/** The chunk table version convertLayer writes. */
export const CHUNK_TABLE_VERSION = 3

const COMPRESSION_CODE: Record<ChunkCompression, number> = { none: 0, zstd: 1, lz4: 2 }

function corrupt (msg: string): never {
  throw new CorruptImageError(`chunk table: ${msg}`)
}

/** Encodes a v3 chunk table (v2 layout). `storedSizes[d - 1]` is device d's blob file size. */
export function encodeChunkTable (entries: ChunkExtent[], chunkSize: number, storedSizes: number[], maxEntry = chunkSize): Buffer {
  const devAt = CHUNK_TABLE_HEADER
  const entAt = devAt + CHUNK_TABLE_DEVICE_V2 * storedSizes.length
  const out = Buffer.alloc(entAt + CHUNK_TABLE_ENTRY_V2 * entries.length)
  out.write(CHUNK_TABLE_MAGIC, 0, 'latin1')
  out.writeUInt32LE(CHUNK_TABLE_VERSION, 8)
  out.writeUInt32LE(entries.length, 12)
  out.writeUInt32LE(chunkSize, 16)
  out.writeUInt32LE(storedSizes.length, 20)
  out.writeUInt32LE(maxEntry, 24)
  storedSizes.forEach((s, i) => { out.writeBigUInt64LE(BigInt(s), devAt + i * CHUNK_TABLE_DEVICE_V2) })
  entries.forEach((e, i) => {
    const p = entAt + i * CHUNK_TABLE_ENTRY_V2
    out.writeUInt16LE(e.device, p)
    out.writeUInt8(COMPRESSION_CODE[e.compression], p + 2)
    out.writeUInt32LE(e.blkaddr, p + 4)
    out.writeUInt32LE(e.length, p + 8)
    out.writeUInt32LE(e.storedLength, p + 12)
    out.writeBigUInt64LE(BigInt(e.storedOffset), p + 16)
    e.digest.copy(out, p + 24)
  })
  return out
}

/**
 * Parses and validates the chunk table bytes `b` (from `blocks * 4096` of a metadata image) against the image's
 * device table (`viewBlocks[d - 1]` = device d's view size in blocks). Throws CorruptImageError naming the fault.
 */
export function parseChunkTable (b: Buffer, viewBlocks: number[]): ChunkTable {
  if (b.length < CHUNK_TABLE_HEADER) corrupt(`missing: ${b.length} bytes after the EROFS blocks`)
  if (b.toString('latin1', 0, 8) !== CHUNK_TABLE_MAGIC) corrupt('bad magic (not a Guoce chunk table)')
  const version = b.readUInt32LE(8)
  if (version !== 1 && version !== 2 && version !== 3) corrupt(`version ${version} is not supported (this reader reads 1, 2 and 3)`)
  const count = b.readUInt32LE(12)
  const chunkSize = b.readUInt32LE(16)
  if (chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE || (chunkSize & (chunkSize - 1)) !== 0) corrupt(`chunk size ${chunkSize} is not a power of two in [${MIN_CHUNK_SIZE}, ${MAX_CHUNK_SIZE}]`)
  let maxEntry = chunkSize
  if (version === 3) {
    maxEntry = b.readUInt32LE(24)
    if (maxEntry < chunkSize || maxEntry > chunkSize * MAX_PACK_CHUNKS || maxEntry % BLOCK_SIZE !== 0) corrupt(`longest entry ${maxEntry} out of range [${chunkSize}, ${chunkSize * MAX_PACK_CHUNKS}] or not a multiple of ${BLOCK_SIZE}`)
  }
  let entAt = CHUNK_TABLE_HEADER
  let storedSizes: number[]
  const entrySize = version === 1 ? CHUNK_TABLE_ENTRY_V1 : CHUNK_TABLE_ENTRY_V2
  if (version !== 1) {
    const devCount = b.readUInt32LE(20)
    if (devCount !== viewBlocks.length) corrupt(`${devCount} devices, the device table has ${viewBlocks.length}`)
    entAt += devCount * CHUNK_TABLE_DEVICE_V2
    if (entAt > b.length) corrupt(`device sizes past the end (${b.length} bytes)`)
    storedSizes = []
    for (let i = 0; i < devCount; i++) {
      const s = b.readBigUInt64LE(CHUNK_TABLE_HEADER + i * CHUNK_TABLE_DEVICE_V2)
      if (s > BigInt(Number.MAX_SAFE_INTEGER)) corrupt(`device ${i + 1}: stored size ${s} out of range`)
      storedSizes.push(Number(s))
    }
  } else {
    storedSizes = viewBlocks.map(n => n * BLOCK_SIZE)
  }
  // bound the count by the bytes present before allocating anything per entry
  if (count * entrySize > b.length - entAt) corrupt(`${count} entries of ${entrySize} bytes do not fit in the ${b.length - entAt} bytes present`)

  const entries: ChunkExtent[] = new Array(count)
  let prev: ChunkExtent | undefined
  for (let i = 0; i < count; i++) {
    const p = entAt + i * entrySize
    const device = b.readUInt16LE(p)
    const blkaddr = b.readUInt32LE(p + 4)
    const length = b.readUInt32LE(p + 8)
    const where = `entry ${i} (device ${device} block ${blkaddr})`
    const blocks = viewBlocks[device - 1]
    if (device < 1 || blocks === undefined) corrupt(`${where}: device not in the device table (${viewBlocks.length} devices)`)
    if (length < 1 || length > maxEntry) corrupt(`${where}: length ${length} out of range [1, ${maxEntry}]`)
    if (blkaddr + Math.ceil(length / BLOCK_SIZE) > blocks) corrupt(`${where}: past the end of the blob's view (${blocks} blocks)`)
    if (prev !== undefined && (prev.device > device || (prev.device === device && prev.blkaddr + Math.ceil(prev.length / BLOCK_SIZE) > blkaddr))) {
      corrupt(`${where}: entries overlap or are out of order`)
    }
    let compression: ChunkCompression = 'none'
    let storedOffset = blkaddr * BLOCK_SIZE
    let storedLength = length
    let digestAt = p + 16
    if (version !== 1) {
      const code = b.readUInt8(p + 2)
      if (code === 1) compression = 'zstd'
      else if (code === 2) corrupt(`${where}: lz4 chunks are reserved in the format but this reader does not decode them`)
      else if (code !== 0) corrupt(`${where}: unknown compression ${code}`)
      storedLength = b.readUInt32LE(p + 12)
      const off = b.readBigUInt64LE(p + 16)
      if (off > BigInt(Number.MAX_SAFE_INTEGER)) corrupt(`${where}: stored offset ${off} out of range`)
      storedOffset = Number(off)
      digestAt = p + 24
      if (storedLength < 1 || storedLength > length) corrupt(`${where}: stored length ${storedLength} out of range [1, ${length}]`)
      if (compression === 'none' && storedLength !== length) corrupt(`${where}: uncompressed chunk stored in ${storedLength} bytes, not ${length}`)
    }
    if (storedOffset + storedLength > storedSizes[device - 1]!) corrupt(`${where}: stored extent [${storedOffset}, +${storedLength}) past the end of the blob (${storedSizes[device - 1]} bytes)`)
    const e: ChunkExtent = { device, blkaddr, length, digest: Buffer.from(b.subarray(digestAt, digestAt + 32)), compression, storedOffset, storedLength }
    entries[i] = e
    prev = e
  }
  if (version !== 1) {
    // stored extents of one blob must not overlap (each chunk is stored once; the view order may differ from the stored order)
    const byStored = entries.slice().sort((x, y) => x.device - y.device || x.storedOffset - y.storedOffset)
    for (let i = 1; i < byStored.length; i++) {
      const a = byStored[i - 1]!
      const c = byStored[i]!
      if (a.device === c.device && a.storedOffset + a.storedLength > c.storedOffset) {
        corrupt(`device ${c.device}: stored extents of blocks ${a.blkaddr} and ${c.blkaddr} overlap at byte ${c.storedOffset}`)
      }
    }
  }
  return { version, chunkSize, maxEntry, entries, storedSizes }
}

/**
 * The entry of `sorted` (one device's entries, sorted by blkaddr as parseChunkTable returns them) whose view
 * holds block `blkaddr`: the chunk's own entry, or the pack it is in. A file chunk at `blkaddr` is then the bytes
 * from `(blkaddr - e.blkaddr) * 4096` of the decoded entry.
 */
export function extentAt (sorted: ChunkExtent[], blkaddr: number): ChunkExtent | undefined {
  let lo = 0; let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (sorted[mid]!.blkaddr <= blkaddr) lo = mid + 1
    else hi = mid
  }
  const e = sorted[lo - 1]
  return e !== undefined && (blkaddr - e.blkaddr) * BLOCK_SIZE < e.length ? e : undefined
}

/** The metadata image's EROFS reader and its validated chunk table. */
export async function loadChunkTable (metaPath: string): Promise<{ reader: ErofsReader, table: ChunkTable, size: number }> {
  const img = await readFile(metaPath)
  const reader = new ErofsReader(img)
  const table = parseChunkTable(img.subarray(reader.sb.blocks * BLOCK_SIZE), reader.sb.devices.map(d => d.blocks))
  return { reader, table, size: img.length }
}

/** Reads and validates the chunk table at the end of a metadata image (v1 or v2); throws a clear error for a hostile one. */
export async function readChunkTable (metaPath: string): Promise<ChunkTable> {
  return (await loadChunkTable(metaPath)).table
}

/** The uncompressed view size of each device d (index d - 1): blocks * 4096 from the device table. */
export async function blobViewSizes (metaPath: string): Promise<number[]> {
  const img = await readFile(metaPath)
  return new ErofsReader(img).sb.devices.map(d => d.blocks * BLOCK_SIZE)
}

function mismatch (e: ChunkExtent, why: string): never {
  throw new ChunkDigestMismatchError(`device ${e.device} block ${e.blkaddr}: ${why}`)
}

function verify (e: ChunkExtent, out: Buffer): Buffer {
  if (out.length !== e.length) mismatch(e, `decodes to ${out.length} bytes, the chunk table says ${e.length}`)
  const got = createHash('sha256').update(out).digest()
  if (!got.equals(e.digest)) mismatch(e, `chunk sha256 ${got.toString('hex')} != ${e.digest.toString('hex')}`)
  return out
}

function checkStored (e: ChunkExtent, stored: Uint8Array): Buffer {
  if (stored.length !== e.storedLength) mismatch(e, `${stored.length} stored bytes, the chunk table says ${e.storedLength}`)
  if (e.compression === 'lz4') mismatch(e, 'lz4 chunks are not decoded by this reader')
  return Buffer.from(stored.buffer, stored.byteOffset, stored.length)
}

function zstdFailure (e: ChunkExtent, err: unknown): never {
  const code = (err as { code?: string }).code
  if (code === 'ERR_BUFFER_TOO_LARGE') mismatch(e, `zstd data decompresses past the chunk's ${e.length} bytes (refused, output bounded)`)
  mismatch(e, `zstd data does not decompress: ${(err as Error).message}`)
}

/**
 * Decompresses (bounded to e.length) and verifies the digest; any fault of the stored bytes (wrong length,
 * bad or oversized zstd data, wrong sha256) throws ChunkDigestMismatchError naming device and block.
 * For 'none' the result shares memory with `stored`.
 */
export function decodeChunk (e: ChunkExtent, stored: Uint8Array): Buffer {
  const buf = checkStored(e, stored)
  if (e.compression === 'none') return verify(e, buf)
  let out: Buffer
  try {
    out = zstdDecompressSync(buf, { maxOutputLength: e.length, chunkSize: outputChunk(e.length) })
  } catch (err) {
    zstdFailure(e, err)
  }
  return verify(e, out)
}

const zstdDecompressAsync = promisify(zstdDecompress) as (b: Buffer, o: { maxOutputLength: number, chunkSize: number }) => Promise<Buffer>

/**
 * zlib's output chunk for a chunk of `length` bytes: the whole chunk at once, up to 4 MiB (1 MiB chunks and
 * packs of two are one pass; a larger chunk is not allocated whole before its bytes decode). At zlib's default
 * 16 KiB a 1 MiB chunk took 64 trips between the thread pool and the JS thread, and on a busy serving thread a
 * decode waited 0.28 s for them (bench/containerd, traced); 7.9 ms -> 1.0 ms on an idle one.
 */
function outputChunk (length: number): number {
  return Math.min(Math.max(length, 64 * 1024), 4 * 1024 * 1024)
}

/** decodeChunk() with the decompression on libuv's thread pool (keeps a serving event loop free). */
export async function decodeChunkAsync (e: ChunkExtent, stored: Uint8Array): Promise<Buffer> {
  const buf = checkStored(e, stored)
  if (e.compression === 'none') return verify(e, buf)
  let out: Buffer
  try {
    out = await zstdDecompressAsync(buf, { maxOutputLength: e.length, chunkSize: outputChunk(e.length) })
  } catch (err) {
    zstdFailure(e, err)
  }
  return verify(e, out)
}

/**
 * How convertLayer stores chunks. 'zstd' compresses each chunk alone at `level` and keeps the result only when
 * it saves at least `MIN_COMPRESSION_SAVING` of the chunk; 'none' stores every chunk as is (still a v2 table).
 */
export interface ChunkCompressionOptions { compression?: 'zstd' | 'none', level?: number }

/**
 * Stored compressed only if that saves at least this fraction of the chunk: a chunk that barely compresses
 * (already-compressed data) would cost a decompression on every fetch for almost no bytes. On a real rootfs
 * it changes 37 of 5266 chunks (doc/FORMAT.md, "Compression choice").
 * @default 1/8
 */
export const MIN_COMPRESSION_SAVING = 1 / 8
/** @default 3 (zstd's own default; bench/convert measures levels against conversion time and size) */
export const DEFAULT_ZSTD_LEVEL = 3

/** zstd window for a chunk: just large enough to hold it (a chunk is compressed alone). */
export function zstdWindowLog (length: number): number {
  return Math.min(30, Math.max(10, Math.ceil(Math.log2(Math.max(length, 1)))))
}

async function readExactly (fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let got = 0
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got)
    if (bytesRead === 0) throw new CorruptImageError(`blob: short read at byte ${pos + got}`)
    got += bytesRead
  }
}

/**
 * Writes the uncompressed view (`viewSize` bytes, sparse where no entry is) of a stored blob: every entry is
 * read from `blobPath`, decoded and verified, and written at `blkaddr * 4096`. The output appears at `outPath`
 * only when complete. Entries must be validated (parseChunkTable) and of one device.
 */
export async function materializeEntries (entries: ChunkExtent[], viewSize: number, storedSize: number, blobPath: string, outPath: string, opts: { signal?: AbortSignal } = {}): Promise<{ chunks: number, bytes: number }> {
  const tmp = `${outPath}.tmp-${randomBytes(6).toString('hex')}`
  const src = await open(blobPath, 'r')
  let out: FileHandle | undefined
  try {
    const { size } = await src.stat()
    if (size !== storedSize) throw new CorruptImageError(`blob ${blobPath}: ${size} bytes, the chunk table says ${storedSize}`)
    out = await open(tmp, 'wx')
    await out.truncate(viewSize)
    const sorted = entries.slice().sort((a, b) => a.storedOffset - b.storedOffset) // read the blob front to back
    let bytes = 0
    for (const e of sorted) {
      opts.signal?.throwIfAborted()
      const stored = Buffer.allocUnsafe(e.storedLength)
      await readExactly(src, stored, e.storedOffset)
      const data = await decodeChunkAsync(e, stored)
      await out.write(data, 0, data.length, e.blkaddr * BLOCK_SIZE)
      bytes += data.length
    }
    await out.close()
    out = undefined
    await rename(tmp, outPath)
    return { chunks: entries.length, bytes }
  } catch (err) {
    await out?.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  } finally {
    await src.close()
  }
}

/**
 * Expands device `device` (1-based) of a metadata image from its stored blob file into the uncompressed view
 * the EROFS device table describes, at `outPath` (what `fsck.erofs --device=` and `mount -o device=` take).
 * Every chunk the image refers to is verified; bytes no entry covers are zeros.
 */
export async function materializeBlob (metaPath: string, device: number, blobPath: string, outPath: string, opts: { signal?: AbortSignal } = {}): Promise<{ viewSize: number, chunks: number, bytes: number }> {
  const { reader, table } = await loadChunkTable(metaPath)
  const dev = reader.sb.devices[device - 1]
  if (dev === undefined) throw new CorruptImageError(`${metaPath}: no device ${device} (device table has ${reader.sb.devices.length})`)
  const viewSize = dev.blocks * BLOCK_SIZE
  const r = await materializeEntries(table.entries.filter(e => e.device === device), viewSize, table.storedSizes![device - 1]!, blobPath, outPath, opts)
  return { viewSize, ...r }
}
