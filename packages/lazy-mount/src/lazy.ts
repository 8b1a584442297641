/**
 * `guoce image mount REF DIR` in EROFS mode: the image's metadata layers local, its data blobs served on a
 * FUSE mount (blob-server.ts), each metadata layer mounted file-backed with `-o device=` those files, the
 * layers stacked with overlayfs at DIR (mountLayers of @guoce/image).
 *
 * Who owns what: the LazyMount owns the FUSE server, the chunk store handle, the blob source, every mount it
 * made and its state file (state.ts); `unmount()` undoes them top first. A failure part-way undoes what was
 * made. The process that calls lazyMount serves the blobs: it must never read DIR itself.
 */
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import * as native from '@guoce/native-mount'
import {
  ANNOTATION_BLOBS, CorruptImageError, MEDIA_TYPE_EROFS_META, RegistryClient, blobViewSizes, convertedLayers,
  isDockerRef, mountLayers, parseDockerRef, parseOciRef, readChunkTable, readManifest, type ChunkExtent, type Descriptor, type Manifest
} from '@guoce/image'
import { mergeBlob, serveBlobs, type BlobFile, type BlobServerStats } from './blob-server.js'
import { chunkReader } from './chunk-reader.js'
import { serveLayer, type LayerServer } from './fs-server.js'
import { openChunkStore, type ChunkStore, type ChunkStoreStats } from './chunk-store.js'
import { daemonBlobSource, localBlobSource, type BlobSource } from './source.js'
import { claimMount, removeState, undoMounts, writeState, type MountState } from './state.js'
import { LazyMountError } from './errors.js'
import { FILL_CONCURRENCY, PREFETCH_CONCURRENCY } from './constants.js'
import { MEDIA_TYPE_PREFETCH, parseTrace, traceRecorder, type Trace } from './prefetch.js'
import { readInOrder, type ChunkReader } from './chunk-reader.js'

export interface LazyMountOptions {
  /**
   * `erofs` (default): kernel EROFS over blobs served by FUSE; `fuse`: the metadata itself served by FUSE
   * (ErofsReader in TypeScript), for kernels without file-backed EROFS.
   */
  mode?: 'erofs' | 'fuse'
  /** Mount state and work directories (one per mount). */
  stateDir: string
  /** The node chunk store's directory. */
  chunkDir: string
  /** Chunk store quota in bytes. */
  chunkQuota?: number
  /** Local API of the peer daemon, for `docker://` refs (chunks come through its swarm). */
  daemon?: string
  /** `docker://` over plain http whatever the registry's host (default: plain http only for loopback). */
  plainHttp?: boolean
  /**
   * Blob tasks as ranged ones (daemonBlobSource `ranged`): only the pieces read cross the swarm and the origin
   * (bench/lazy-net: 28 MB over the link for the python3 start-up, against the whole 108 MB blob without).
   * False: a blob's first read starts its whole download in the daemon. @default true
   */
  ranged?: boolean
  /** Replaces the source the ref implies (tests: a source that lies). */
  source?: BlobSource
  fetchTimeoutMs?: number
  fetchAttempts?: number
  readDeadlineMs?: number
  onFirstRead?: (blob: string, e: ChunkExtent) => void
  /** Records the order of first chunk reads to this file (written at unmount). */
  recordTrace?: string
  /** Fetch the chunks of the image's prefetch trace in the background (@default true). */
  prefetch?: boolean
  /** Called when the prefetch list was gone through (chunks fetched or already held). */
  onPrefetchDone?: (r: { chunks: number, ms: number }) => void
  log?: (obj: Record<string, unknown>) => void
}

export interface LazyMountStats { server: BlobServerStats, store: ChunkStoreStats }

export interface LazyMount {
  id: string
  target: string
  state: MountState
  store: ChunkStore
  stats: () => LazyMountStats
  unmount: () => Promise<void>
}

/** A metadata layer on local disk and the digests of its blobs (its device table, in order). */
export interface ResolvedLayer { meta: string, blobs: string[] }

function sha256File (b: Buffer): string { return `sha256:${createHash('sha256').update(b).digest('hex')}` }

async function checkedMeta (path: string, d: Descriptor): Promise<void> {
  const got = sha256File(await readFile(path))
  if (got !== d.digest) throw new CorruptImageError(`metadata layer ${d.digest}: bytes hash to ${got}`)
}

/** The blob digests a metadata layer's descriptor names (its device table, in order), checked. */
export function blobsOf (d: Descriptor): string[] {
  const list = JSON.parse(d.annotations?.[ANNOTATION_BLOBS] ?? '[]') as unknown
  if (!Array.isArray(list) || !list.every(x => typeof x === 'string' && /^sha256:[0-9a-f]{64}$/.test(x))) throw new CorruptImageError(`metadata layer ${d.digest}: bad ${ANNOTATION_BLOBS} annotation`)
  return list as string[]
}

/** The image's metadata layers on local disk (verified against the manifest) and where its blobs come from. */
async function resolveImage (ref: string, work: string, opts: { daemon?: string, source?: BlobSource, plainHttp?: boolean, ranged?: boolean }): Promise<{ layers: ResolvedLayer[], source: BlobSource, trace?: Trace }> {
  if (isDockerRef(ref)) {
    const r = parseDockerRef(ref)
    const client = new RegistryClient(r.registry, opts.plainHttp !== undefined ? { plainHttp: opts.plainHttp } : {})
    const m = await client.getManifest(r.repository, r.digest ?? r.tag ?? 'latest')
    const doc = JSON.parse(m.bytes.toString('utf8')) as Manifest
    if (!Array.isArray(doc.layers)) throw new LazyMountError(`${ref}: not an image manifest (an index is not mounted: name the manifest by digest)`)
    await mkdir(join(work, 'meta'), { recursive: true })
    const layers: ResolvedLayer[] = []
    for (const d of doc.layers.filter(l => l.mediaType === MEDIA_TYPE_EROFS_META)) {
      const p = join(work, 'meta', d.digest.replace(/^sha256:/, ''))
      await client.getBlob(r.repository, d, p) // size and sha256 checked before the file appears
      layers.push({ meta: p, blobs: blobsOf(d) })
    }
    if (layers.length === 0) throw new LazyMountError(`${ref}: no Guoce metadata layers: convert the image first (guoce image convert)`)
    if (opts.daemon === undefined) throw new LazyMountError(`${ref}: a docker:// image needs the peer daemon (--daemon)`)
    const source = opts.source ?? daemonBlobSource({ api: opts.daemon, blobUrl: (digest) => `${client.base}/v2/${r.repository}/blobs/${digest}`, ranged: opts.ranged !== false })
    const t = doc.layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)
    if (t === undefined) return { layers, source }
    const p = join(work, 'meta', 'prefetch')
    await client.getBlob(r.repository, t, p)
    return { layers, source, trace: parseTrace(await readFile(p), `${ref} prefetch layer`) }
  }
  const dir = parseOciRef(ref).dir
  const layers: ResolvedLayer[] = []
  for (const l of await convertedLayers(ref)) {
    await checkedMeta(l.meta, l.descriptor)
    layers.push({ meta: l.meta, blobs: blobsOf(l.descriptor) })
  }
  if (layers.length === 0) throw new LazyMountError(`${ref}: no Guoce metadata layers: convert the image first (guoce image convert)`)
  const source = opts.source ?? localBlobSource(dir)
  const t = (await readManifest(parseOciRef(ref))).manifest.layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)
  if (t === undefined) return { layers, source }
  const bytes = await readFile(join(dir, 'blobs', 'sha256', t.digest.replace(/^sha256:/, '')))
  if (sha256File(bytes) !== t.digest) throw new CorruptImageError(`prefetch layer ${t.digest}: bytes hash to ${sha256File(bytes)}`)
  return { layers, source, trace: parseTrace(bytes, `${ref} prefetch layer`) }
}

/** Every blob of the image's metadata layers with the union of its chunk extents over the layers that use it. */
export async function blobFiles (layers: ResolvedLayer[]): Promise<BlobFile[]> {
  const byDigest = new Map<string, BlobFile>()
  for (const l of layers) {
    const sizes = await blobViewSizes(l.meta)
    if (sizes.length !== l.blobs.length) throw new CorruptImageError(`${l.meta}: ${sizes.length} devices, manifest names ${l.blobs.length} blobs`)
    const extents = l.blobs.map(() => [] as ChunkExtent[])
    for (const e of (await readChunkTable(l.meta)).entries) {
      const list = extents[e.device - 1]
      if (list === undefined) throw new CorruptImageError(`${l.meta}: a chunk on device ${e.device} of ${l.blobs.length}`)
      list.push(e)
    }
    l.blobs.forEach((digest, i) => {
      const b: BlobFile = { digest, size: sizes[i]!, extents: [] }
      const known = byDigest.get(digest)
      // merged even with nothing known: mergeBlob sorts the extents and refuses overlaps and disagreements
      byDigest.set(digest, mergeBlob(known ?? b, { ...b, extents: extents[i]! }))
    })
  }
  return [...byDigest.values()]
}

/** Mounts `ref` lazily at `target`; the calling process serves its blobs until `unmount()`. */
export async function lazyMount (ref: string, targetDir: string, opts: LazyMountOptions): Promise<LazyMount> {
  const stateDir = resolve(opts.stateDir)
  const state = await claimMount(stateDir, targetDir, ref, 'blobs')
  const { id, target, work } = state
  const layerWork = join(work, 'layers')
  /** Undo steps, last first. */
  const undos: Array<() => Promise<void>> = []
  const undo = async (): Promise<void> => {
    for (const u of undos.splice(0).reverse()) await u().catch(() => {})
    await undoMounts(stateDir, state) // anything the steps above left, then the work dir and the state file
  }
  try {
    const resolved = await resolveImage(ref, work, opts)
    undos.push(async () => { await resolved.source.close() })
    const files = await blobFiles(resolved.layers)
    const store = await openChunkStore({ dir: opts.chunkDir, ...(opts.chunkQuota !== undefined ? { quota: opts.chunkQuota } : {}) })
    undos.push(async () => { await store.flush() })
    state.layers = resolved.layers.map((_, i) => join(layerWork, `layer-${i}`))
    await writeState(stateDir, state)
    const recorder = opts.recordTrace !== undefined ? traceRecorder(opts.recordTrace) : undefined
    const onFirstRead = (blob: string, e: ChunkExtent): void => { recorder?.add(blob, e.blkaddr); opts.onFirstRead?.(blob, e) }
    const chunks = chunkReader({
      store, source: resolved.source, onFirstRead,
      ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
      ...(opts.fetchAttempts !== undefined ? { fetchAttempts: opts.fetchAttempts } : {}),
      ...(opts.log !== undefined ? { log: opts.log } : {})
    })
    undos.push(async () => { await chunks.close() })
    if (recorder !== undefined) undos.push(async () => { await recorder.save(resolved.layers.map(l => l.meta)) })
    const onRead = recorder !== undefined ? { onRead: recorder.touch } : {}
    const deadline = opts.readDeadlineMs !== undefined ? { readDeadlineMs: opts.readDeadlineMs } : {}
    const logOpt = opts.log !== undefined ? { log: opts.log } : {}
    let stats: () => LazyMountStats['server']
    if ((opts.mode ?? 'erofs') === 'erofs') {
      const s = await serveBlobs({ mountpoint: state.fuse, blobs: files, chunks, ...deadline, ...logOpt, ...onRead })
      undos.push(async () => { await s.close() })
      const m = await mountLayers(resolved.layers.map(l => ({ meta: l.meta, blobs: l.blobs.map(d => s.path(d)) })), target, { mounter: native, workDir: layerWork })
      undos.push(async () => { await m.unmount() })
      stats = s.stats
    } else {
      const extents = new Map(files.map(f => [f.digest, f.extents]))
      const servers: LayerServer[] = []
      for (const [i, l] of resolved.layers.entries()) {
        const srv = await serveLayer({ mountpoint: state.layers[i]!, metaPath: l.meta, blobs: l.blobs, extents, chunks, ...deadline, ...logOpt, ...onRead })
        undos.push(async () => { await srv.close() })
        servers.push(srv)
      }
      await stack(state.layers, target)
      undos.push(async () => { await native.umount2(target, native.constants.MNT_DETACH) })
      stats = () => {
        const all = servers.map(x => x.stats())
        return { reads: sum(all, 'reads'), bytesRead: sum(all, 'bytesRead'), failedReads: sum(all, 'failedReads'), refused: chunks.refused(), fetchedStoredBytes: chunks.fetchedStoredBytes() }
      }
    }
    if (resolved.trace !== undefined && opts.prefetch !== false) {
      const stop = new AbortController()
      undos.push(async () => { stop.abort() })
      void prefetch(resolved.trace, files, chunks, stop.signal).then(r => { if (r !== undefined) opts.onPrefetchDone?.(r) })
    }
    let done: Promise<void> | undefined
    return {
      id, target, state, store,
      stats: () => ({ server: stats(), store: store.stats() }),
      unmount: async () => { done ??= undo(); await done }
    }
  } catch (err) {
    await undo()
    throw err
  }
}

/**
 * Fetches the chunks of a prefetch trace into the node chunk store, in order, PREFETCH_CONCURRENCY at a time.
 * A reader of a chunk being prefetched joins that fetch; other reads go to the source beside these. (It once
 * fetched one chunk at a time and only while no reader waited: every read that joined a prefetched chunk then
 * held the next one back, and bench/lazy-net's start-up with the list took 1.3-2x as long as without it.)
 * Failures are left to the reads that need the chunk. Returns undefined when stopped before the end.
 */
async function prefetch (trace: Trace, files: BlobFile[], chunks: ChunkReader, signal: AbortSignal): Promise<{ chunks: number, ms: number } | undefined> {
  const t0 = Date.now()
  const byBlob = new Map(files.map(f => [f.digest, new Map(f.extents.map(e => [e.blkaddr, e]))]))
  const todo = trace.chunks.flatMap(c => { const e = byBlob.get(c.blob)?.get(c.blkaddr); return e !== undefined ? [{ blob: c.blob, e }] : [] })
  const { fetched, failed } = await readInOrder(chunks, todo, PREFETCH_CONCURRENCY, () => signal.aborted)
  return signal.aborted ? undefined : { chunks: fetched + failed, ms: Date.now() - t0 }
}

function sum<K extends string> (xs: Array<Record<K, number>>, k: K): number { return xs.reduce((a, x) => a + x[k], 0) }

/** Stacks layer mount points (bottom first) read-only at `target`: overlayfs, or a bind mount for one layer. */
async function stack (points: string[], target: string): Promise<void> {
  if (points.length === 1) await native.mount(points[0]!, target, null, native.constants.MS_BIND, null)
  else await native.mount('overlay', target, 'overlay', native.constants.MS_RDONLY, `lowerdir=${[...points].reverse().join(':')}`)
}

export interface FillOptions {
  chunkDir: string
  chunkQuota?: number
  daemon?: string
  source?: BlobSource
  /** Chunks fetched at once. @default FILL_CONCURRENCY */
  concurrency?: number
  fetchTimeoutMs?: number
  fetchAttempts?: number
  onProgress?: (done: number, total: number) => void
  signal?: AbortSignal
}

export interface FillResult { chunks: number, fetched: number, fetchedBytes: number, present: number }

/**
 * `guoce image pull REF`: every chunk of the image into the node chunk store (verified), so mounts of it,
 * running or later, read no chunk from the network. Safe beside running mounts: they find the chunks on disk.
 */
export async function fillChunks (ref: string, opts: FillOptions): Promise<FillResult> {
  const work = await mkdtemp(join(tmpdir(), 'guoce-pull-'))
  try {
    const resolved = await resolveImage(ref, work, opts)
    const files = await blobFiles(resolved.layers)
    const store = await openChunkStore({ dir: opts.chunkDir, ...(opts.chunkQuota !== undefined ? { quota: opts.chunkQuota } : {}) })
    const chunks = chunkReader({
      store, source: resolved.source,
      ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
      ...(opts.fetchAttempts !== undefined ? { fetchAttempts: opts.fetchAttempts } : {})
    })
    try {
      const todo = files.flatMap(f => f.extents.map(e => ({ blob: f.digest, e })))
      let next = 0; let done = 0; let present = 0
      const worker = async (): Promise<void> => {
        while (next < todo.length) {
          opts.signal?.throwIfAborted()
          const { blob, e } = todo[next++]!
          if (store.has(e.digest)) present++
          await chunks.read(blob, e)
          opts.onProgress?.(++done, todo.length)
        }
      }
      await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? FILL_CONCURRENCY) }, worker))
      const st = store.stats()
      return { chunks: todo.length, fetched: st.fetches, fetchedBytes: st.fetchedBytes, present }
    } finally {
      await store.flush()
      await chunks.close()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/** Undoes mounts synchronously (process exit after an uncaught error): detach target, layers and the FUSE mount. */
export function unmountSync (state: MountState): void {
  for (const p of [state.target, ...[...state.layers].reverse(), state.fuse]) {
    try { native.umount2Sync(p, native.constants.MNT_DETACH) } catch {}
  }
}

export { removeState }
