/**
 * Prefetch traces: `guoce image mount --record-trace FILE` records the order in which chunks were first read;
 * `guoce image convert --prefetch-trace FILE` stores that list in the converted image (an extra manifest
 * layer of media type MEDIA_TYPE_PREFETCH, `oci:` targets); a mount of an image that has one fetches those
 * chunks in that order in the background, one at a time and only while no reader waits on a fetch (on-demand
 * reads first). A chunk is named by (blob digest, block address in the blob's uncompressed view): what the
 * EROFS metadata names, whatever way the blob stores it.
 */
import { createHash, randomBytes } from 'node:crypto'
import { open, readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { ANNOTATION_BLOBS, InvalidImageRefError, parseOciRef, readManifest, type Descriptor } from '@guoce/image'
import { MAX_TRACE_ENTRIES } from './constants.js'

/** Media type of the prefetch list layer. */
export const MEDIA_TYPE_PREFETCH = 'application/vnd.guoce.image.prefetch.v1+json'

export interface TraceEntry { blob: string, blkaddr: number }
export interface Trace { version: 1, chunks: TraceEntry[] }

/** Parses and bounds a trace (a file from a user or a layer from a registry). */
export function parseTrace (bytes: Buffer, what: string): Trace {
  if (bytes.length > MAX_TRACE_ENTRIES * 128) throw new InvalidImageRefError(`${what}: prefetch trace of ${bytes.length} bytes is too large`)
  let doc: unknown
  try { doc = JSON.parse(bytes.toString('utf8')) } catch (err) { throw new InvalidImageRefError(`${what}: prefetch trace is not JSON`, { cause: err }) }
  const t = doc as { version?: unknown, chunks?: unknown }
  if (t.version !== 1 || !Array.isArray(t.chunks) || t.chunks.length > MAX_TRACE_ENTRIES) throw new InvalidImageRefError(`${what}: not a version 1 prefetch trace of at most ${MAX_TRACE_ENTRIES} chunks`)
  const chunks: TraceEntry[] = []
  for (const c of t.chunks as Array<{ blob?: unknown, blkaddr?: unknown }>) {
    if (typeof c?.blob !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(c.blob) || !Number.isSafeInteger(c.blkaddr) || (c.blkaddr as number) < 0) {
      throw new InvalidImageRefError(`${what}: bad prefetch trace entry ${JSON.stringify(c).slice(0, 200)}`)
    }
    chunks.push({ blob: c.blob, blkaddr: c.blkaddr as number })
  }
  return { version: 1, chunks }
}

async function writeDurable (path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`
  const fh = await open(tmp, 'wx')
  try { await fh.writeFile(data); await fh.sync() } finally { await fh.close() }
  await rename(tmp, path)
}

/** Records first reads; `save()` writes the trace atomically. */
export function traceRecorder (path: string): { add: (blob: string, blkaddr: number) => void, save: () => Promise<void> } {
  const chunks: TraceEntry[] = []
  return {
    add: (blob, blkaddr) => { if (chunks.length < MAX_TRACE_ENTRIES) chunks.push({ blob, blkaddr }) },
    save: async () => { await writeDurable(path, JSON.stringify({ version: 1, chunks })) }
  }
}

/**
 * Stores a trace in a converted `oci:DIR[:TAG]` image: a prefetch layer (replacing any earlier one), a new
 * manifest, and the index entries that named the old manifest pointed at the new one. Entries naming blobs
 * that are not in the image are refused.
 */
export async function attachPrefetchTrace (ref: string, traceFile: string): Promise<{ manifestDigest: string, chunks: number }> {
  const r = parseOciRef(ref)
  const trace = parseTrace(await readFile(traceFile), traceFile)
  const { manifest, descriptor } = await readManifest(r)
  const blobs = new Set(manifest.layers.flatMap(l => JSON.parse(l.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[]))
  const foreign = trace.chunks.find(c => !blobs.has(c.blob))
  if (foreign !== undefined) throw new InvalidImageRefError(`${traceFile}: blob ${foreign.blob} is not in ${ref}`)
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
