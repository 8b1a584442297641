/**
 * Prefetch traces: `guoce image mount --record-trace FILE` records the order in which chunks were first read;
 * `guoce image convert --prefetch-trace FILE` stores that list in the converted image (an extra manifest
 * layer of media type MEDIA_TYPE_PREFETCH, `oci:` targets); a mount of an image that has one fetches those
 * chunks in that order in the background, a few at a time (PREFETCH_CONCURRENCY; readers of them join those
 * fetches). A chunk is named by (blob digest, block address in the blob's uncompressed view): what the
 * EROFS metadata names, whatever way the blob stores it.
 *
 * A recorded trace also lists the file chunks the workload read (`files`: path and chunk number, in the order of
 * their first read), resolved from the kernel's reads and the layers' metadata at unmount. Given such a trace,
 * the converter packs those files' short chunks together (doc/FORMAT.md, "Packed small chunks") and stores the
 * list of the new image's entries that hold them; the stored layer carries `chunks` only.
 */
import { createHash, randomBytes } from 'node:crypto'
import { open, readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import {
  ANNOTATION_BLOBS, BLOCK_SIZE, InvalidImageRefError, MAX_PATH, convertedLayers, extentAt, fileChunks, loadChunkTable, parseOciRef, readManifest,
  touchedFileChunks, type ChunkExtent, type Descriptor, type FileChunkAddress
} from '@guoce/image'
import { MAX_PREFETCH_ENTRY_BYTES, MAX_TRACE_BLOCKS, MAX_TRACE_ENTRIES } from './constants.js'

/** Media type of the prefetch list layer. */
export const MEDIA_TYPE_PREFETCH = 'application/vnd.guoce.image.prefetch.v1+json'

/**
 * A chunk table entry: its blob and view block address, and (lists stored by this converter) where the blob
 * stores it and what it decodes to, so that a snapshotter can fetch and verify it before the metadata layer
 * that names it has arrived. The list is a layer of the image's manifest, so its digests are as trusted as the
 * chunk table's; a chunk fetched by them is kept under the digest it verified against, nothing else.
 */
export interface TraceEntry { blob: string, blkaddr: number, extent?: TraceExtent }
export interface TraceExtent { length: number, digest: string, compression: 'zstd' | 'none', storedOffset: number, storedLength: number }
/** A file chunk a workload read: the file's path in the image (no leading slash) and the chunk's number. */
export interface TraceFile { path: string, chunk: number }
export interface Trace { version: 1, chunks: TraceEntry[], files?: TraceFile[] }

/** Parses and bounds a trace (a file from a user or a layer from a registry). */
export function parseTrace (bytes: Buffer, what: string): Trace {
  if (bytes.length > MAX_TRACE_ENTRIES * 128) throw new InvalidImageRefError(`${what}: prefetch trace of ${bytes.length} bytes is too large`)
  let doc: unknown
  try { doc = JSON.parse(bytes.toString('utf8')) } catch (err) { throw new InvalidImageRefError(`${what}: prefetch trace is not JSON`, { cause: err }) }
  const t = doc as { version?: unknown, chunks?: unknown }
  if (t.version !== 1 || !Array.isArray(t.chunks) || t.chunks.length > MAX_TRACE_ENTRIES) throw new InvalidImageRefError(`${what}: not a version 1 prefetch trace of at most ${MAX_TRACE_ENTRIES} chunks`)
  const chunks: TraceEntry[] = []
  for (const c of t.chunks as Array<{ blob?: unknown, blkaddr?: unknown, extent?: unknown }>) {
    if (typeof c?.blob !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(c.blob) || !Number.isSafeInteger(c.blkaddr) || (c.blkaddr as number) < 0) {
      throw new InvalidImageRefError(`${what}: bad prefetch trace entry ${JSON.stringify(c).slice(0, 200)}`)
    }
    const x = c.extent as Partial<TraceExtent> | undefined
    if (x === undefined) { chunks.push({ blob: c.blob, blkaddr: c.blkaddr as number }); continue }
    const int = (n: unknown, min: number, max: number): boolean => Number.isSafeInteger(n) && (n as number) >= min && (n as number) <= max
    if (typeof x !== 'object' || x === null || !int(x.length, 1, MAX_PREFETCH_ENTRY_BYTES) || typeof x.digest !== 'string' || !/^[0-9a-f]{64}$/.test(x.digest) ||
      (x.compression !== 'zstd' && x.compression !== 'none') || !int(x.storedOffset, 0, Number.MAX_SAFE_INTEGER) || !int(x.storedLength, 1, x.length as number) ||
      (x.compression === 'none' && x.storedLength !== x.length)) {
      throw new InvalidImageRefError(`${what}: bad prefetch trace entry extent ${JSON.stringify(c).slice(0, 300)}`)
    }
    chunks.push({ blob: c.blob, blkaddr: c.blkaddr as number, extent: { length: x.length!, digest: x.digest, compression: x.compression, storedOffset: x.storedOffset!, storedLength: x.storedLength! } })
  }
  const f = (doc as { files?: unknown }).files
  if (f === undefined) return { version: 1, chunks }
  if (!Array.isArray(f) || f.length > MAX_TRACE_ENTRIES) throw new InvalidImageRefError(`${what}: prefetch trace files must be a list of at most ${MAX_TRACE_ENTRIES}`)
  const files: TraceFile[] = []
  for (const x of f as Array<{ path?: unknown, chunk?: unknown }>) {
    if (typeof x?.path !== 'string' || x.path.length === 0 || Buffer.byteLength(x.path) > MAX_PATH || x.path.includes('\0') || x.path.startsWith('/') ||
      !Number.isSafeInteger(x.chunk) || (x.chunk as number) < 0) {
      throw new InvalidImageRefError(`${what}: bad prefetch trace file ${JSON.stringify(x).slice(0, 200)}`)
    }
    files.push({ path: x.path, chunk: x.chunk as number })
  }
  return { version: 1, chunks, files }
}

async function writeDurable (path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`
  const fh = await open(tmp, 'wx')
  try { await fh.writeFile(data); await fh.sync() } finally { await fh.close() }
  await rename(tmp, path)
}

export interface TraceRecorder {
  /** A chunk table entry's first read by a reader (not by prefetch or read-ahead). */
  add: (blob: string, blkaddr: number) => void
  /** Bytes [pos, end) of a blob's view that the kernel asked for. */
  touch: (blob: string, pos: number, end: number) => void
  /** Writes the trace atomically; with the layers' metadata images, the file chunks read too (`files`). */
  save: (metaPaths?: string[]) => Promise<void>
}

/** The chunk extent a listed entry names (device 0: not from a device table), or undefined if it names none. */
export function listedExtent (c: TraceEntry): ChunkExtent | undefined {
  const x = c.extent
  if (x === undefined) return undefined
  return { device: 0, blkaddr: c.blkaddr, length: x.length, digest: Buffer.from(x.digest, 'hex'), compression: x.compression, storedOffset: x.storedOffset, storedLength: x.storedLength }
}

/** Records first reads; `save()` writes the trace atomically. */
export function traceRecorder (path: string): TraceRecorder {
  const chunks: TraceEntry[] = []
  /** blob -> view block -> order of its first touch */
  const touched = new Map<string, Map<number, number>>()
  let order = 0
  let blocks = 0
  return {
    add: (blob, blkaddr) => { if (chunks.length < MAX_TRACE_ENTRIES) chunks.push({ blob, blkaddr }) },
    touch: (blob, pos, end) => {
      let m = touched.get(blob)
      if (m === undefined) touched.set(blob, m = new Map())
      const t = order++
      for (let b = Math.floor(pos / BLOCK_SIZE); b * BLOCK_SIZE < end && blocks < MAX_TRACE_BLOCKS; b++) {
        if (!m.has(b)) { m.set(b, t); blocks++ }
      }
    },
    save: async (metaPaths) => {
      const trace: Trace = { version: 1, chunks }
      if (metaPaths !== undefined) {
        const files: TraceFile[] = []
        const seen = new Set<string>()
        try {
          for (const meta of metaPaths) {
            const { reader } = await loadChunkTable(meta)
            for (const f of touchedFileChunks(fileChunks(reader), touched)) {
              const k = `${f.path}\0${f.chunk}`
              if (!seen.has(k) && files.length < MAX_TRACE_ENTRIES) { seen.add(k); files.push(f) }
            }
          }
          trace.files = files
        } catch {
          // a metadata image that no longer reads (it was checked at mount): the entries read are still a trace
        }
      }
      await writeDurable(path, JSON.stringify(trace))
    }
  }
}

/**
 * One walk of a converted `oci:DIR[:TAG]` image's metadata layers: each blob's chunk table entries (sorted by
 * block address, the union over the layers that name the blob), and every file chunk, top layer first.
 */
async function imageChunks (ref: string): Promise<{ entries: Map<string, ChunkExtent[]>, chunks: FileChunkAddress[] }> {
  const byBlob = new Map<string, Map<number, ChunkExtent>>()
  const chunks: FileChunkAddress[] = []
  for (const l of (await convertedLayers(ref)).reverse()) {
    const { reader, table } = await loadChunkTable(l.meta)
    for (const e of table.entries) {
      const tag = reader.sb.devices[e.device - 1]?.tag
      if (tag === undefined) continue
      let m = byBlob.get(`sha256:${tag}`)
      if (m === undefined) byBlob.set(`sha256:${tag}`, m = new Map())
      m.set(e.blkaddr, e)
    }
    chunks.push(...fileChunks(reader))
  }
  const entries = new Map([...byBlob].map(([b, m]) => [b, [...m.values()].sort((x, y) => x.blkaddr - y.blkaddr)]))
  return { entries, chunks }
}

/**
 * The chunk table entries of a converted `oci:DIR[:TAG]` image that hold the given file chunks, in their order
 * (each entry once; a path in several layers is the top layer's): the prefetch list of an image converted with
 * those files packed together.
 */
export async function entriesOfFiles (ref: string, files: TraceFile[]): Promise<TraceEntry[]> {
  const { entries, chunks } = await imageChunks(ref)
  const where = new Map<string, { blob: string, blkaddr: number }>()
  for (const c of chunks) {
    const k = `${c.path}\0${c.chunk}`
    if (!where.has(k)) where.set(k, c)
  }
  const out: TraceEntry[] = []
  const seen = new Set<string>()
  for (const f of files) {
    const w = where.get(`${f.path}\0${f.chunk}`)
    if (w === undefined) continue
    const e = extentAt(entries.get(w.blob) ?? [], w.blkaddr)
    if (e === undefined) continue
    const k = `${w.blob}/${e.blkaddr}`
    if (!seen.has(k)) { seen.add(k); out.push({ blob: w.blob, blkaddr: e.blkaddr }) }
  }
  return out
}

/**
 * Stores a trace in a converted `oci:DIR[:TAG]` image: a prefetch layer (replacing any earlier one), a new
 * manifest, and the index entries that named the old manifest pointed at the new one. Entries naming blobs
 * that are not in the image are refused.
 */
export async function attachPrefetchTrace (ref: string, traceFile: string | Trace): Promise<{ manifestDigest: string, chunks: number }> {
  const r = parseOciRef(ref)
  const what = typeof traceFile === 'string' ? traceFile : 'prefetch trace'
  const parsed = typeof traceFile === 'string' ? parseTrace(await readFile(traceFile), traceFile) : traceFile
  // every entry that is one of the image's chunk table entries carries its stored extent and digest
  const { entries } = await imageChunks(ref)
  const trace: Trace = {
    version: 1,
    chunks: parsed.chunks.map(c => {
      const found = extentAt(entries.get(c.blob) ?? [], c.blkaddr)
      const e = found?.blkaddr === c.blkaddr ? found : undefined
      if (e === undefined || e.length > MAX_PREFETCH_ENTRY_BYTES || e.compression === 'lz4') return { blob: c.blob, blkaddr: c.blkaddr }
      return { blob: c.blob, blkaddr: c.blkaddr, extent: { length: e.length, digest: e.digest.toString('hex'), compression: e.compression, storedOffset: e.storedOffset, storedLength: e.storedLength } }
    })
  }
  const { manifest, descriptor } = await readManifest(r)
  const blobs = new Set(manifest.layers.flatMap(l => JSON.parse(l.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[]))
  const foreign = trace.chunks.find(c => !blobs.has(c.blob))
  if (foreign !== undefined) throw new InvalidImageRefError(`${what}: blob ${foreign.blob} is not in ${ref}`)
  const put = async (data: Buffer): Promise<Descriptor> => {
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`
    await writeDurable(join(r.dir, 'blobs', 'sha256', digest.slice(7)), data)
    return { mediaType: '', digest, size: data.length }
  }
  const layer = await put(Buffer.from(JSON.stringify(trace)))
  const next = { ...manifest, layers: [...manifest.layers.filter(l => l.mediaType !== MEDIA_TYPE_PREFETCH), { mediaType: MEDIA_TYPE_PREFETCH, digest: layer.digest, size: layer.size }] }
  const m = await put(Buffer.from(JSON.stringify(next)))
  const indexPath = join(r.dir, 'index.json')
  const index = JSON.parse(await readFile(indexPath, 'utf8')) as { manifests: Descriptor[] }
  let hit = 0
  index.manifests = index.manifests.map(d => d.digest === descriptor.digest ? (hit++, { ...d, digest: m.digest, size: m.size }) : d)
  if (hit === 0) throw new InvalidImageRefError(`${ref}: its manifest is inside an image index; attach the trace to a plain manifest`)
  await writeDurable(indexPath, JSON.stringify(index))
  return { manifestDigest: m.digest, chunks: trace.chunks.length }
}
