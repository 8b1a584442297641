/**
 * The chunk map of a converted layer, for readers of its blobs (the lazy mount's FUSE blob server):
 * which stored bytes of which blob hold each chunk of the uncompressed view the EROFS device table
 * describes, and how to turn them back into the chunk's bytes.
 *
 * Format v1 stores chunks uncompressed, so a chunk's stored extent is its place in the view
 * (`storedOffset = blkaddr * 4096`, `storedLength = length`, compression 'none'). Callers use only
 * this module to map a read to chunks, so a format that stores chunks otherwise changes nothing for them.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { decodeChunkTable } from './blob.js'
import { BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from './constants.js'
import { ErofsReader } from './erofs/reader.js'
import { ChunkDigestMismatchError, CorruptImageError } from './errors.js'

export type ChunkCompression = 'none' | 'zstd' | 'lz4'

export interface ChunkExtent {
  /** 1-based slot in the metadata image's device table. */
  device: number
  /** Block address (4 KiB blocks) in that blob's uncompressed view, as EROFS chunk indexes hold it. */
  blkaddr: number
  /** Uncompressed bytes. */
  length: number
  /** sha256 of the uncompressed bytes. */
  digest: Buffer
  compression: ChunkCompression
  /** Byte offset of the stored bytes in the blob file (the OCI blob). */
  storedOffset: number
  storedLength: number
}

/** Every chunk a metadata image refers to, sorted by (device, blkaddr). */
export interface ChunkTable { version: number, chunkSize: number, entries: ChunkExtent[] }

async function readMeta (metaPath: string): Promise<{ img: Buffer, reader: ErofsReader }> {
  const img = await readFile(metaPath)
  return { img, reader: new ErofsReader(img) }
}

/** Reads and checks the chunk table of a metadata image (CorruptImageError when malformed). */
export async function readChunkTable (metaPath: string): Promise<ChunkTable> {
  const { img, reader } = await readMeta(metaPath)
  const ct = decodeChunkTable(img.subarray(reader.sb.blocks * BLOCK_SIZE))
  if (ct === undefined) throw new CorruptImageError(`${metaPath}: chunk table missing or malformed at byte ${reader.sb.blocks * BLOCK_SIZE}`)
  const { chunkSize } = ct
  if (chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE || !Number.isInteger(Math.log2(chunkSize))) {
    throw new CorruptImageError(`${metaPath}: chunk table: chunk size ${chunkSize} is not a power of two in [${MIN_CHUNK_SIZE}, ${MAX_CHUNK_SIZE}]`)
  }
  const devices = reader.sb.devices
  const entries: ChunkExtent[] = []
  let prev: ChunkExtent | undefined
  for (const e of ct.entries) {
    const dev = devices[e.device - 1]
    if (dev === undefined) throw new CorruptImageError(`${metaPath}: chunk table: entry for device ${e.device}, image has ${devices.length}`)
    if (e.length < 1 || e.length > chunkSize) throw new CorruptImageError(`${metaPath}: chunk table: device ${e.device} block ${e.blkaddr}: length ${e.length} out of range`)
    if (e.blkaddr + Math.ceil(e.length / BLOCK_SIZE) > dev.blocks) throw new CorruptImageError(`${metaPath}: chunk table: device ${e.device} block ${e.blkaddr}: past the end of the blob (${dev.blocks} blocks)`)
    if (prev !== undefined && (e.device < prev.device || (e.device === prev.device && e.blkaddr < prev.blkaddr + Math.ceil(prev.length / BLOCK_SIZE)))) {
      throw new CorruptImageError(`${metaPath}: chunk table: entries overlap or are out of order at device ${e.device} block ${e.blkaddr}`)
    }
    prev = { ...e, compression: 'none', storedOffset: e.blkaddr * BLOCK_SIZE, storedLength: e.length }
    entries.push(prev)
  }
  return { version: 1, chunkSize, entries }
}

/**
 * A chunk's bytes from its stored bytes: decompressed (never past `e.length`) and checked against its
 * digest. Throws ChunkDigestMismatchError when they differ, CorruptImageError when the stored bytes cannot be decoded.
 */
export function decodeChunk (e: ChunkExtent, stored: Uint8Array): Buffer {
  if (e.compression !== 'none') throw new CorruptImageError(`device ${e.device} block ${e.blkaddr}: compression ${e.compression} is not readable by format v1`)
  if (stored.length !== e.storedLength || e.storedLength !== e.length) {
    throw new ChunkDigestMismatchError(`device ${e.device} block ${e.blkaddr}: ${stored.length} stored bytes, chunk has ${e.length}`)
  }
  const got = createHash('sha256').update(stored).digest()
  if (!got.equals(e.digest)) throw new ChunkDigestMismatchError(`device ${e.device} block ${e.blkaddr}: bytes hash to ${got.toString('hex')}, chunk table says ${e.digest.toString('hex')}`)
  return Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength)
}

/** Uncompressed view size (bytes) of each blob in the metadata image's device table, in device order. */
export async function blobViewSizes (metaPath: string): Promise<number[]> {
  const { reader } = await readMeta(metaPath)
  return reader.sb.devices.map(d => d.blocks * BLOCK_SIZE)
}
