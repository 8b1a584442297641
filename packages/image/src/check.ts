/**
 * inspectImage(): what is inside a converted layer (tree, chunk and dedup figures).
 * checkImage(): verifies every metadata structure and every chunk digest; throws on the first fault,
 * naming it (CorruptImageError / ChunkDigestMismatchError).
 */
import { createHash } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'
import { decodeChunkTable, type ChunkTableEntry } from './blob.js'
import { BLOCK_SIZE } from './constants.js'
import { ErofsReader, type ErofsInode, type ErofsSuper } from './erofs/reader.js'
import { ChunkDigestMismatchError, CorruptImageError } from './errors.js'
import type { NodeKind } from './tree.js'

export interface InspectFile { path: string, kind: NodeKind, size: number, mode: number, uid: number, gid: number, chunks?: number, holes?: number }

export interface ImageInspection {
  super: Omit<ErofsSuper, 'uuid'> & { uuid: string }
  chunkSize: number
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
  }
  metadataBytes: number
  files?: InspectFile[]
}

interface Loaded { reader: ErofsReader, table: ChunkTableEntry[], chunkSize: number, size: number }

async function load (metaPath: string): Promise<Loaded> {
  const img = await readFile(metaPath)
  const reader = new ErofsReader(img)
  const ct = decodeChunkTable(img.subarray(reader.sb.blocks * BLOCK_SIZE))
  if (ct === undefined) throw new CorruptImageError(`chunk table: missing or malformed at byte ${reader.sb.blocks * BLOCK_SIZE}`)
  return { reader, table: ct.entries, chunkSize: ct.chunkSize, size: img.length }
}

export async function inspectImage (metaPath: string, opts: { files?: boolean } = {}): Promise<ImageInspection> {
  const { reader, table, chunkSize, size } = await load(metaPath)
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
  for (const e of table) bytesPerDevice[e.device - 1] = (bytesPerDevice[e.device - 1] ?? 0) + e.length
  const { uuid, ...sb } = reader.sb
  return {
    super: { ...sb, uuid: uuid.toString('hex') },
    chunkSize,
    inodes,
    paths,
    fileBytes,
    chunks: { referenced, holes, distinct: table.length, bytesPerDevice },
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
  const { reader, table, chunkSize } = await load(metaPath)
  const devices = reader.sb.devices
  if (chunkSize < BLOCK_SIZE || !Number.isInteger(Math.log2(chunkSize))) throw new CorruptImageError(`chunk table: chunk size ${chunkSize} is not a power of two >= 4096`)
  const byAddr = new Map<string, ChunkTableEntry>()
  let prev: ChunkTableEntry | undefined
  for (const e of table) {
    const dev = devices[e.device - 1]
    if (dev === undefined) throw new CorruptImageError(`chunk table: entry for device ${e.device}, image has ${devices.length}`)
    if (e.length < 1 || e.length > chunkSize) throw new CorruptImageError(`chunk table: device ${e.device} block ${e.blkaddr}: length ${e.length} out of range`)
    if (e.blkaddr + Math.ceil(e.length / BLOCK_SIZE) > dev.blocks) throw new CorruptImageError(`chunk table: device ${e.device} block ${e.blkaddr}: past the end of the blob (${dev.blocks} blocks)`)
    if (prev !== undefined && (prev.device > e.device || (prev.device === e.device && prev.blkaddr + Math.ceil(prev.length / BLOCK_SIZE) > e.blkaddr))) {
      throw new CorruptImageError(`chunk table: entries overlap or are out of order at device ${e.device} block ${e.blkaddr}`)
    }
    byAddr.set(`${e.device}:${e.blkaddr}`, e)
    prev = e
  }
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
      const e = byAddr.get(`${c.device}:${c.blkaddr}`)
      if (e === undefined) throw new CorruptImageError(`${where}: device ${c.device} block ${c.blkaddr} is not in the chunk table`)
      const expected = Math.min(chunkSize, ino.size - i * chunkSize)
      if (e.length !== expected) throw new CorruptImageError(`${where}: chunk of ${e.length} bytes where the file needs ${expected}`)
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
      if (size !== dev.blocks * BLOCK_SIZE) throw new CorruptImageError(`blob for device ${d + 1}: ${size} bytes, device table says ${dev.blocks} blocks`)
      const buf = Buffer.allocUnsafe(chunkSize)
      for (const e of table) {
        if (e.device !== d + 1) continue
        opts.signal?.throwIfAborted()
        const { bytesRead } = await fh.read(buf, 0, e.length, e.blkaddr * BLOCK_SIZE)
        if (bytesRead !== e.length) throw new CorruptImageError(`blob for device ${d + 1}: short read at block ${e.blkaddr}`)
        const got = createHash('sha256').update(buf.subarray(0, e.length)).digest()
        if (!got.equals(e.digest)) throw new ChunkDigestMismatchError(`device ${d + 1} block ${e.blkaddr}: chunk sha256 ${got.toString('hex')} != ${e.digest.toString('hex')}`)
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
