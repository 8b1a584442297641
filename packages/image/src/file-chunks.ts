/**
 * Where a metadata image keeps each file's chunks, by path: what turns a prefetch trace recorded as blob reads into
 * the files a start-up read (so a conversion can pack them together), and those files back into the chunk table
 * entries of another conversion of the same image.
 */
import { BLOCK_SIZE } from './constants.js'
import type { ErofsReader } from './erofs/reader.js'

export interface FileChunkAddress {
  /** The file's path as the image names it, without a leading slash (every name of a hard-linked file). */
  path: string
  /** Chunk number in the file. */
  chunk: number
  /** Blob digest (`sha256:<hex>`) from the device table. */
  blob: string
  /** Its slot in the device table (1-based). */
  device: number
  /** Block address in that blob's uncompressed view. */
  blkaddr: number
  /** Bytes of the file in this chunk. */
  length: number
}

/** Every non-hole chunk of every regular file of a metadata image, in walk order. */
export function fileChunks (reader: ErofsReader): FileChunkAddress[] {
  const out: FileChunkAddress[] = []
  const tags = reader.sb.devices.map(d => `sha256:${d.tag}`)
  reader.walk((path, ino) => {
    if (ino.kind !== 'file' || ino.chunks === undefined || ino.chunkSize === undefined) return
    const cs = ino.chunkSize
    ino.chunks.forEach((c, i) => {
      if (c === null) return
      const blob = tags[c.device - 1]
      if (blob === undefined) return
      out.push({ path, chunk: i, blob, device: c.device, blkaddr: c.blkaddr, length: Math.min(cs, ino.size - i * cs) })
    })
  })
  return out
}

/** The file chunks whose view blocks a reader touched, ordered by the first touch (`touched`: blob -> block -> order). */
export function touchedFileChunks (chunks: FileChunkAddress[], touched: ReadonlyMap<string, ReadonlyMap<number, number>>): Array<{ path: string, chunk: number }> {
  const hits: Array<{ path: string, chunk: number, first: number }> = []
  for (const c of chunks) {
    const blocks = touched.get(c.blob)
    if (blocks === undefined) continue
    let first = Infinity
    const n = Math.ceil(c.length / BLOCK_SIZE)
    for (let b = 0; b < n; b++) {
      const t = blocks.get(c.blkaddr + b)
      if (t !== undefined && t < first) first = t
    }
    if (first !== Infinity) hits.push({ path: c.path, chunk: c.chunk, first })
  }
  hits.sort((a, b) => a.first - b.first)
  return hits.map(({ path, chunk }) => ({ path, chunk }))
}

/** The hot chunk set a conversion takes (ConvertLayerOptions.hotChunks) from a list of file chunks. */
export function hotChunks (files: ReadonlyArray<{ path: string, chunk: number }>): Map<string, Set<number>> {
  const hot = new Map<string, Set<number>>()
  for (const f of files) {
    let s = hot.get(f.path)
    if (s === undefined) hot.set(f.path, s = new Set())
    s.add(f.chunk)
  }
  return hot
}
