/**
 * inspectImage(): what is inside a converted layer (tree, chunk and dedup figures).
 * checkImage(): verifies every metadata structure, the chunk table (extents in bounds, not overlapping) and,
 * with the blobs, every stored extent (decompressed, bounded, sha256 checked) and every blob digest; throws on
 * the first fault, naming it (CorruptImageError / ChunkDigestMismatchError).
 */
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { decodeChunkAsync, extentAt, loadChunkTable, type ChunkExtent } from './chunks.js'
import { type ErofsInode, type ErofsReader, type ErofsSuper } from './erofs/reader.js'
import { ChunkDigestMismatchError, CorruptImageError } from './errors.js'
import type { NodeKind } from './tree.js'
import { BLOCK_SIZE } from './constants.js'

export interface InspectFile { path: string, kind: NodeKind, size: number, mode: number, uid: number, gid: number, chunks?: number, holes?: number }

export interface ImageInspection {
  super: Omit<ErofsSuper, 'uuid'> & { uuid: string }
  chunkSize: number
  /** Chunk table version (1: uncompressed blobs, 2: compressed chunks). */
  tableVersion: number
  /** Inodes by kind (hardlinked inodes once). */
  inodes: Record<NodeKind, number>
  paths: number
  /** Sum of regular file sizes (each inode once). */
  fileBytes: number
  chunks: {
    /** Chunk indexes that point at data (over all files). */
    referenced: number
    holes: number
    /** Distinct chunks in the chunk table. */
    distinct: number
    /** Bytes of distinct chunks, per device (1-based index - 1). */
    bytesPerDevice: number[]
    /** Stored (compressed) bytes of those chunks, per device. */
    storedBytesPerDevice: number[]
    /** Distinct chunks stored zstd-compressed. */
    compressed: number
  }
  metadataBytes: number
  files?: InspectFile[]
}

interface Loaded { reader: ErofsReader, table: ChunkExtent[], chunkSize: number, size: number, version: number, storedSizes: number[] }

async function load (metaPath: string): Promise<Loaded> {
  const { reader, table, size } = await loadChunkTable(metaPath)
  return { reader, table: table.entries, chunkSize: table.chunkSize, size, version: table.version, storedSizes: table.storedSizes! }
}

export async function inspectImage (metaPath: string, opts: { files?: boolean } = {}): Promise<ImageInspection> {
  const { reader, table, chunkSize, size, version } = await load(metaPath)
  const inodes: Record<NodeKind, number> = { file: 0, dir: 0, symlink: 0, char: 0, block: 0, fifo: 0, socket: 0 }
  const seen = new Set<number>()
  let paths = 0; let fileBytes = 0; let referenced = 0; let holes = 0
  const files: InspectFile[] = []
  reader.walk((path, ino) => {
    paths++
    const first = !seen.has(ino.nid)
    seen.add(ino.nid)
    if (first) {
      inodes[ino.kind]++
      if (ino.kind === 'file') {
        fileBytes += ino.size
        for (const c of ino.chunks ?? []) { if (c === null) holes++; else referenced++ }
      }
    }
    if (opts.files === true) {
      files.push({ path, kind: ino.kind, size: ino.size, mode: ino.mode, uid: ino.uid, gid: ino.gid, ...(ino.chunks !== undefined ? { chunks: ino.chunks.filter(c => c !== null).length, holes: ino.chunks.filter(c => c === null).length } : {}) })
    }
  })
  const bytesPerDevice = reader.sb.devices.map(() => 0)
  const storedBytesPerDevice = reader.sb.devices.map(() => 0)
  let compressed = 0
  for (const e of table) {
    bytesPerDevice[e.device - 1] = (bytesPerDevice[e.device - 1] ?? 0) + e.length
    storedBytesPerDevice[e.device - 1] = (storedBytesPerDevice[e.device - 1] ?? 0) + e.storedLength
    if (e.compression !== 'none') compressed++
  }
  const { uuid, ...sb } = reader.sb
  return {
    super: { ...sb, uuid: uuid.toString('hex') },
    chunkSize,
    tableVersion: version,
    inodes,
    paths,
    fileBytes,
    chunks: { referenced, holes, distinct: table.length, bytesPerDevice, storedBytesPerDevice, compressed },
    metadataBytes: size,
    ...(opts.files === true ? { files } : {})
  }
}

export interface CheckImageOptions {
  /** Blob files in device order (device id 1 first). Without them only the metadata is checked. */
  blobs?: string[]
  /** Also hash each whole blob and compare with its device tag (sha256 hex). @default true */
  blobDigests?: boolean
  signal?: AbortSignal
}

export interface CheckReport { inodes: number, paths: number, chunksChecked: number, bytesChecked: number, devices: number }

/** Verifies the metadata image (and its blobs when given). Throws on the first fault. */
export async function checkImage (metaPath: string, opts: CheckImageOptions = {}): Promise<CheckReport> {
  const { reader, table, chunkSize, storedSizes } = await load(metaPath)
  const devices = reader.sb.devices
  // bounds, order and overlap of views and stored extents were checked by loadChunkTable
  const byDevice = new Map<number, ChunkExtent[]>()
  for (const e of table) { let l = byDevice.get(e.device); if (l === undefined) byDevice.set(e.device, l = []); l.push(e) } // stays sorted
  const names = new Map<number, number>()
  const inodes = new Map<number, ErofsInode>()
  const allNids = new Set<number>()
  let paths = 0
  reader.walk((path, ino) => {
    paths++
    allNids.add(ino.nid)
    if (ino.kind === 'dir') return
    names.set(ino.nid, (names.get(ino.nid) ?? 0) + 1)
    if (inodes.has(ino.nid)) return
    inodes.set(ino.nid, ino)
    if (ino.kind !== 'file' || ino.chunks === undefined) return
    if (ino.chunkSize !== chunkSize) throw new CorruptImageError(`inode nid ${ino.nid} (${path}): chunk size ${ino.chunkSize} differs from the chunk table's ${chunkSize}`)
    ino.chunks.forEach((c, i) => {
      if (c === null) return
      const where = `inode nid ${ino.nid} (${path}) chunk ${i}`
      if (c.device < 1 || c.device > devices.length) throw new CorruptImageError(`${where}: device ${c.device} not in the device table`)
      const e = extentAt(byDevice.get(c.device) ?? [], c.blkaddr)
      if (e === undefined) throw new CorruptImageError(`${where}: device ${c.device} block ${c.blkaddr} is not in the chunk table`)
      const expected = Math.min(chunkSize, ino.size - i * chunkSize)
      const has = e.length - (c.blkaddr - e.blkaddr) * BLOCK_SIZE
      // a whole chunk is an entry of its own; a short one is its own entry or in a pack, which may hold more after it
      if (expected === chunkSize ? (e.blkaddr !== c.blkaddr || e.length !== expected) : has < expected) throw new CorruptImageError(`${where}: chunk of ${has} bytes where the file needs ${expected}`)
    })
  })
  for (const [nid, n] of names) {
    const ino = inodes.get(nid)!
    if (ino.nlink !== n) throw new CorruptImageError(`inode nid ${nid}: nlink ${ino.nlink} but ${n} names`)
  }
  if (reader.sb.inos !== allNids.size) throw new CorruptImageError(`superblock: ${reader.sb.inos} inodes, the tree has ${allNids.size}`)

  let chunksChecked = 0
  let bytesChecked = 0
  const blobs = opts.blobs ?? []
  if (blobs.length > 0 && blobs.length !== devices.length) throw new CorruptImageError(`device table has ${devices.length} blobs, ${blobs.length} given`)
  for (let d = 0; d < blobs.length; d++) {
    const dev = devices[d]!
    const fh = await open(blobs[d]!, 'r')
    try {
      const { size } = await fh.stat()
      if (size !== storedSizes[d]) throw new CorruptImageError(`blob for device ${d + 1}: ${size} bytes, the chunk table says ${storedSizes[d]} (device table: ${dev.blocks} blocks of view)`)
      // stored order: the blob is read front to back
      const mine = table.filter(e => e.device === d + 1).sort((a, b) => a.storedOffset - b.storedOffset)
      const buf = Buffer.allocUnsafe(mine.reduce((m, e) => Math.max(m, e.storedLength), 1))
      for (const e of mine) {
        opts.signal?.throwIfAborted()
        const { bytesRead } = await fh.read(buf, 0, e.storedLength, e.storedOffset)
        if (bytesRead !== e.storedLength) throw new CorruptImageError(`blob for device ${d + 1}: short read at byte ${e.storedOffset}`)
        await decodeChunkAsync(e, buf.subarray(0, e.storedLength)) // bounded decompression + sha256; throws ChunkDigestMismatchError
        chunksChecked++
        bytesChecked += e.length
      }
      if (opts.blobDigests !== false && /^[0-9a-f]{64}$/.test(dev.tag)) {
        const h = createHash('sha256')
        for await (const c of fh.createReadStream({ start: 0, autoClose: false, highWaterMark: 1 << 20 })) h.update(c as Buffer)
        const got = h.digest('hex')
        if (got !== dev.tag) throw new ChunkDigestMismatchError(`blob for device ${d + 1}: sha256 ${got} does not match the device tag ${dev.tag}`)
      }
    } finally {
      await fh.close()
    }
  }
  return { inodes: allNids.size, paths, chunksChecked, bytesChecked, devices: devices.length }
}
