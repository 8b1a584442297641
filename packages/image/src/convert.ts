/**
 * Layer conversion: one OCI layer (tar, tar+gzip or tar+zstd, autodetected) streams into
 *  (a) an EROFS metadata image with chunk-based inodes and a (v2) chunk table appended, and
 *  (b) a data blob holding the chunks not already in the chunk dictionary, each stored zstd-compressed
 *      or as is (chunks.ts); the EROFS device table describes the blob's uncompressed view.
 *
 * Both outputs are written to temp names next to their targets, fsynced, and renamed only when the
 * whole layer converted; on any error the temp files are removed, so a failed conversion leaves nothing.
 */
import { randomBytes, createHash } from 'node:crypto'
import { open, rename, rm, type FileHandle } from 'node:fs/promises'
import { BlobWriter, type ChunkDict, type ChunkStats } from './blob.js'
import { encodeChunkTable, extentAt, MAX_PACK_CHUNKS, type ChunkCompressionOptions, type ChunkExtent } from './chunks.js'
import { BLOCK_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_PACK_CHUNKS, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LAYER_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from './constants.js'
import { writeErofs, type ErofsDevice } from './erofs/writer.js'
import { InvalidImageRefError, LayerDigestMismatchError } from './errors.js'
import { LayerBuilder, normalizePath, type LowerDirs, type WhiteoutMode } from './layer.js'
import { readTar } from './tar/reader.js'
import { ByteReader, decodeLayer, type Compression } from './tar/stream.js'
import type { DirNode, Node } from './tree.js'

export interface ConvertLayerOptions {
  /** Where the EROFS metadata image goes. */
  metaPath: string
  /** Where the data blob goes (not created when the layer adds no new chunk). */
  blobPath: string
  /** @default DEFAULT_CHUNK_SIZE */
  chunkSize?: number
  /**
   * Longest pack of short chunks (small files, files' last chunks), stored, fetched and verified as one entry:
   * a multiple of the chunk size from 1 to MAX_PACK_CHUNKS. @default DEFAULT_PACK_CHUNKS (2) chunk sizes
   */
  packSize?: number
  /**
   * Chunks a start-up reads, by file path (as the image names it, no leading slash) and chunk index: their short
   * chunks are packed apart from the others, in packs of their own (a prefetch list's files, see hotChunks()).
   */
  hotChunks?: ReadonlyMap<string, ReadonlySet<number>>
  /** Uncompressed bytes the layer may expand to. @default DEFAULT_MAX_LAYER_SIZE */
  maxSize?: number
  /** @default DEFAULT_MAX_ENTRIES */
  maxEntries?: number
  /** Chunks stored by earlier layers or other images; the new blob is added to it on success. */
  chunkDict?: ChunkDict
  /** @default 'overlay' */
  whiteouts?: WhiteoutMode
  /** How chunks are stored: 'zstd' (each chunk alone, kept when it pays) or 'none'. @default 'zstd' */
  compression?: ChunkCompressionOptions['compression']
  /** zstd level. @default DEFAULT_ZSTD_LEVEL (3) */
  compressionLevel?: number
  /** Also hash the uncompressed tar (the DiffID) of compressed layers; one more sha256 pass. @default false */
  diffId?: boolean
  /** Directory attributes of the layers below (see LowerDirs); updated with this layer on success. */
  lowerDirs?: LowerDirs
  /** sha256 of the input bytes (`sha256:<hex>` or hex); a mismatch is LayerDigestMismatchError and nothing is written. */
  expectedDigest?: string
  signal?: AbortSignal
}

export interface LayerResult {
  compression: Compression
  /** sha256 hex of the input bytes as given (the source layer digest). */
  sourceDigest: string
  sourceSize: number
  /** sha256 hex of the uncompressed tar (the source DiffID): always for plain tars, with `diffId: true` otherwise. */
  diffId: string | undefined
  tarSize: number
  metaDigest: string
  metaSize: number
  /** sha256 hex of the new blob file (its stored bytes, the OCI digest), or undefined when the layer stored no new chunk. */
  blobDigest: string | undefined
  /** Bytes of the new blob file (stored chunks). */
  blobSize: number
  /** Bytes of the new blob's uncompressed view (what its device table entry describes). */
  blobViewSize: number
  /** Blobs this metadata image refers to, in device order (device id = index + 1). */
  devices: ErofsDevice[]
  /** Bytes of each of those blob files, in device order. */
  storedSizes: number[]
  chunkSize: number
  entries: number
  files: number
  inodes: number
  stats: ChunkStats
}

async function fsyncClose (fh: FileHandle): Promise<void> {
  await fh.sync()
  await fh.close()
}

function forEachFile (root: DirNode, fn: (n: Node & { kind: 'file' }) => void): void {
  const seen = new Set<Node>()
  const walk = (d: DirNode): void => {
    for (const c of d.entries.values()) {
      if (c.kind === 'dir') walk(c)
      else if (c.kind === 'file' && !seen.has(c)) { seen.add(c); fn(c) }
    }
  }
  walk(root)
}

export function checkChunkSize (chunkSize: number): void {
  if (!Number.isInteger(Math.log2(chunkSize)) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new InvalidImageRefError(`chunk size ${chunkSize} must be a power of two in [${MIN_CHUNK_SIZE}, ${MAX_CHUNK_SIZE}]`)
  }
}

/** Converts one layer. See the module comment for the outputs and their guarantees. */
export async function convertLayer (source: AsyncIterable<Uint8Array>, opts: ConvertLayerOptions): Promise<LayerResult> {
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
  checkChunkSize(chunkSize)
  const packSize = opts.packSize ?? chunkSize * DEFAULT_PACK_CHUNKS
  if (packSize % chunkSize !== 0 || packSize < chunkSize || packSize > chunkSize * MAX_PACK_CHUNKS) throw new InvalidImageRefError(`pack size ${packSize} must be 1 to ${MAX_PACK_CHUNKS} times the chunk size ${chunkSize}`)
  const maxSize = opts.maxSize ?? DEFAULT_MAX_LAYER_SIZE
  const suffix = `.tmp-${randomBytes(6).toString('hex')}`
  const metaTmp = opts.metaPath + suffix
  const blobTmp = opts.blobPath + suffix
  let blobFh: FileHandle | undefined
  let metaFh: FileHandle | undefined
  let writer: BlobWriter | undefined
  try {
    blobFh = await open(blobTmp, 'wx')
    const blob = writer = new BlobWriter(blobFh, chunkSize, opts.chunkDict, { ...(opts.compression !== undefined ? { compression: opts.compression } : {}), ...(opts.compressionLevel !== undefined ? { level: opts.compressionLevel } : {}) }, packSize)
    const decoded = await decodeLayer(source, { maxSize, diffId: opts.diffId === true, signal: opts.signal })
    const reader = new ByteReader(decoded.stream)
    const builder = new LayerBuilder(opts.whiteouts ?? 'overlay', opts.lowerDirs)
    const { entries } = await readTar(reader, { maxEntries: opts.maxEntries ?? DEFAULT_MAX_ENTRIES, maxSize }, async (e, data) => {
      opts.signal?.throwIfAborted()
      const hot = opts.hotChunks === undefined ? undefined : opts.hotChunks.get(normalizePath(e.path).join('/'))
      await builder.apply(e, data, async (d, size, sparse) => await blob.addFile(d, size, sparse, hot))
    })
    await reader.drain()
    await blob.flush()
    await blob.close()
    if (opts.expectedDigest !== undefined) {
      const want = opts.expectedDigest.replace(/^sha256:/, '')
      if (decoded.compressedDigest() !== want) throw new LayerDigestMismatchError(`layer bytes hash to sha256:${decoded.compressedDigest()}, expected sha256:${want}`)
    }
    const root = builder.finish()

    // Devices: referenced dictionary blobs in dictionary order, then this layer's blob.
    const dict = opts.chunkDict
    const used = new Set<number>()
    forEachFile(root, f => { for (const c of f.chunks) if (c !== null) used.add(c.device) })
    const ordinals = [...used].sort((a, b) => a - b)
    const blobDigest = blob.size > 0 ? blob.digest() : undefined
    const devices: ErofsDevice[] = ordinals.map(o => {
      if (o === blob.ownOrdinal) return { tag: blobDigest!, blocks: blob.size / BLOCK_SIZE }
      const b = dict!.blobs[o - 1]!
      return { tag: b.digest, blocks: b.blocks }
    })
    const storedSizes = ordinals.map(o => o === blob.ownOrdinal ? blob.storedSize : dict!.blobs[o - 1]!.storedSize)
    const devOf = new Map(ordinals.map((o, i) => [o, i + 1]))
    // Chunk table: the entry holding each (device, blkaddr) the image refers to (a whole chunk, or the pack a
    // short chunk is in), with its digest and stored extent.
    const table = new Map<string, ChunkExtent>()
    // dictionary entries per blob, sorted: a ref may point inside one (a short chunk in a pack)
    const dictEntries = new Map<number, ChunkExtent[]>()
    if (dict !== undefined) {
      const seen = new Set<string>()
      for (const c of dict.chunks.values()) {
        if (!used.has(c.blob)) continue
        const e = { ...c, ...(c.pack ?? {}), device: c.blob }
        const k = `${c.blob}:${e.blkaddr}`
        if (seen.has(k)) continue
        seen.add(k)
        let l = dictEntries.get(c.blob)
        if (l === undefined) dictEntries.set(c.blob, l = [])
        l.push(e)
      }
      for (const l of dictEntries.values()) l.sort((a, b) => a.blkaddr - b.blkaddr)
    }
    forEachFile(root, f => {
      f.chunks = f.chunks.map(c => {
        if (c === null) return null
        const device = devOf.get(c.device)!
        const info = c.device === blob.ownOrdinal
          ? (e => e === undefined ? undefined : { ...e, ...e.stored })(blob.entryOf(c.blkaddr))
          : extentAt(dictEntries.get(c.device) ?? [], c.blkaddr)
        if (info === undefined) throw new Error(`internal: no chunk at ${c.device}:${c.blkaddr}`)
        const key = `${device}:${info.blkaddr}`
        if (!table.has(key)) {
          table.set(key, { device, blkaddr: info.blkaddr, length: info.length, digest: info.digest, compression: info.compression, storedOffset: info.storedOffset, storedLength: info.storedLength })
        }
        return { device, blkaddr: c.blkaddr }
      })
    })
    const entriesSorted = [...table.values()].sort((a, b) => a.device - b.device || a.blkaddr - b.blkaddr)
    const uuid = createHash('sha256').update(decoded.compressedDigest()).update(String(chunkSize)).digest().subarray(0, 16)
    const { image, inodes } = writeErofs(root, { chunkSize, devices, uuid })
    // the longest entry any referenced blob holds (dictionary blobs may have been packed with another size)
    const maxEntry = entriesSorted.reduce((m, e) => Math.max(m, Math.ceil(e.length / BLOCK_SIZE) * BLOCK_SIZE), chunkSize)
    const ct = encodeChunkTable(entriesSorted, chunkSize, storedSizes, maxEntry)
    const meta = Buffer.concat([image, ct])
    metaFh = await open(metaTmp, 'wx')
    await metaFh.writeFile(meta)
    await fsyncClose(metaFh)
    metaFh = undefined
    await fsyncClose(blobFh)
    blobFh = undefined

    if (blobDigest !== undefined) await rename(blobTmp, opts.blobPath)
    else await rm(blobTmp, { force: true })
    await rename(metaTmp, opts.metaPath)
    opts.lowerDirs?.apply(root)
    if (dict !== undefined) for (const [hex, c] of blob.foundInDict()) if (!dict.chunks.has(hex)) dict.chunks.set(hex, c)
    if (dict !== undefined && blobDigest !== undefined) {
      const ordinal = dict.blobs.push({ digest: blobDigest, blocks: blob.size / BLOCK_SIZE, storedSize: blob.storedSize })
      for (const c of blob.ownChunks()) {
        const e = c.entry
        dict.chunks.set(c.digest.toString('hex'), { blob: ordinal, blkaddr: c.blkaddr, length: c.length, digest: c.digest, ...e.stored, ...(e.blkaddr !== c.blkaddr || e.length !== c.length ? { pack: { blkaddr: e.blkaddr, length: e.length, digest: e.digest } } : {}) })
      }
    }
    return {
      compression: decoded.compression,
      sourceDigest: decoded.compressedDigest(),
      sourceSize: decoded.compressedSize(),
      diffId: decoded.diffId(),
      tarSize: decoded.uncompressedSize(),
      metaDigest: createHash('sha256').update(meta).digest('hex'),
      metaSize: meta.length,
      blobDigest,
      blobSize: blob.storedSize,
      blobViewSize: blob.size,
      devices,
      storedSizes,
      chunkSize,
      entries,
      files: builder.files,
      inodes,
      stats: blob.stats
    }
  } catch (err) {
    await writer?.close().catch(() => {})
    await blobFh?.close().catch(() => {})
    await metaFh?.close().catch(() => {})
    await rm(blobTmp, { force: true })
    await rm(metaTmp, { force: true })
    throw err
  }
}
