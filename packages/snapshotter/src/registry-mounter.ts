/**
 * The lazy RemoteLayerMounter: layers of converted images straight from their registry, their data fetched
 * chunk by chunk only as containers read it.
 *
 * For a Prepare whose CRI labels name an image (`cri.image-ref` REGISTRY/REPO:TAG, `cri.manifest-digest`,
 * `cri.layer-digest`, `snapshot.ref`): the manifest by its digest from the registry (verified), its config
 * (verified), and the layer taken only where containerd's chain id (`snapshot.ref`) is that layer's chain id in
 * the image, as ociLayoutMounter checks it (a layer digest label alone could name another image's layer). An
 * EROFS metadata layer is fetched (verified, kept under `<dir>/meta`) and mounted file-backed with `device=`
 * the files of its data blobs on ONE FUSE blob server this mounter owns (packages/lazy-mount blob-server.ts:
 * blob files are added as layers arrive). Each file's bytes come from the node chunk store, else the peer
 * daemon's ranged reader (daemonBlobSource: the swarm, then the registry), every chunk verified against the
 * metadata layer's chunk table; each blob's task in the daemon is set up (BlobSource.prepare) as its layer is
 * mounted, before any read. A data-blob layer is "mounted" with nothing to mount (its bytes are reached
 * through the metadata layers' devices). An image's prefetch list (a manifest entry containerd does not count
 * as a layer) is fetched at its top layer and its chunks fetched in the background. Anything else (an ordinary image, a registry that cannot be reached,
 * a chain id that does not match) is declined, and containerd unpacks the layer as usual.
 *
 * Who owns what: the mounter owns the blob server (its FUSE mount under `<dir>/fuse-<random>`, one per
 * process), the chunk reader and its source, and the metadata files. Its layer mounts depend on this process:
 * they read through its FUSE server, so they outlive neither a stop (close) nor a crash; at the next start
 * every one of them is mounted again (`remountOnOpen`) over the new server, and stale FUSE mounts of earlier
 * processes are aborted and detached. This process never reads its own FUSE mount: only the kernel (EROFS,
 * on behalf of containers) does.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbortOptions, Logger, TaskReader } from '@guoce/interface'
import {
  ANNOTATION_FORMAT, CorruptImageError, MEDIA_TYPE_CHUNK_BLOB, MEDIA_TYPE_EROFS_META, RegistryClient, mountLayer, parseDockerRef,
  type ChunkExtent, type Descriptor, type Manifest, type Mounter
} from '@guoce/image'
import {
  MEDIA_TYPE_PREFETCH, abortFuse, blobFiles, blobsOf, chunkReader, daemonBlobSource, listedExtent, readerBlobSource, readInOrder, openChunkStore, parseTrace, serveBlobs,
  type Trace, type BlobServer, type BlobServerStats, type BlobSource, type ChunkReader, type ChunkStore, type ChunkStoreStats
} from '@guoce/lazy-mount'
import type { RemoteLayer, RemoteLayerMounter } from './remote.js'
import { chainIds } from './oci-mounter.js'
import { MAX_CONFIG_BYTES, MAX_LAYER_META_BYTES, MAX_PREFETCH_TRACE_BYTES, PREFETCH_CONCURRENCY, PREPARE_TIMEOUT_MS } from './constants.js'

export interface RegistryMounterInit {
  /** Directory of the metadata layers and the FUSE mount point (created). */
  dir: string
  /** The node chunk store's directory (shared with `guoce image mount`). */
  chunkDir: string
  chunkQuota?: number
  /** The local peer daemon's API (`http://127.0.0.1:PORT` or `unix:/PATH`): chunks come through its reader. */
  daemon: string
  /**
   * The daemon's reader when the snapshotter runs in the daemon's own process: chunks are read through it
   * directly (readerBlobSource) instead of one HTTP request per chunk to `daemon`.
   */
  reader?: TaskReader
  mounter: Mounter
  /** Replaces the daemon source (tests). */
  source?: BlobSource
  log?: Logger
  /**
   * Blob tasks as ranged ones (@default true): only the pieces containers read cross the swarm and the
   * origin. False: the first read of a blob starts its whole download in the daemon (daemonBlobSource's
   * `ranged`, off there by default for `guoce image mount`).
   */
  ranged?: boolean
  /** Milliseconds a FUSE read may wait for its chunks before it fails with EIO. */
  readDeadlineMs?: number
  /** Registries (HOST[:PORT], as image references name them) asked over plain http; loopback ones always are. */
  insecure?: string[]
}

export interface RegistryMounterStats {
  /** The blob server's reads (kernel EROFS reading data on behalf of containers). */
  server: BlobServerStats
  /** The node chunk store: `fetches` is the chunks fetched through the daemon, `hits` those found. */
  store: ChunkStoreStats
  /** Chunks in the blobs served (every chunk a container could read). */
  chunks: number
  /** Bytes of those chunks (uncompressed). */
  chunkBytes: number
  /** Chunk fetches from the blob source (the daemon's reader): how many, their bytes, and their summed wall time. */
  source: { reads: number, bytes: number, ms: number }
  /** Chunks the images' prefetch lists fetched (or found held), and those that failed. */
  prefetch: { chunks: number, failed: number }
}

export interface RegistryMounter extends RemoteLayerMounter {
  stats: () => RegistryMounterStats
  /** Stops serving blobs: every layer mounted from here stops reading (call only when the node is going away). */
  close: () => Promise<void>
}

const DIGEST = /^sha256:([0-9a-f]{64})$/

/** `client` stops with the Prepare that asked; `background` (for what outlives it: beginImage's fetches) does not. */
interface Found { client: RegistryClient, background: RegistryClient, repository: string, manifest: Manifest, layers: Descriptor[], index: number }

/** `p`, or the abort of `signal` (what `p` does goes on). */
async function untilAborted<T> (p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return await p
  signal.throwIfAborted()
  return await new Promise<T>((resolve, reject) => {
    const stop = (): void => { reject(signal.reason) }
    signal.addEventListener('abort', stop, { once: true })
    p.then(v => { signal.removeEventListener('abort', stop); resolve(v) }, (err: unknown) => { signal.removeEventListener('abort', stop); reject(err) })
  })
}

/** What registry/repository an image reference as CRI names it (`REGISTRY/REPO[:TAG][@DIGEST]`) is at; undefined if none. */
function locate (imageRef: string): { registry: string, repository: string } | undefined {
  try {
    const r = parseDockerRef(`docker://${imageRef}`)
    return { registry: r.registry, repository: r.repository }
  } catch { return undefined }
}

export function registryMounter (init: RegistryMounterInit): RegistryMounter {
  const log = init.log
  const sourceStats = { reads: 0, bytes: 0, ms: 0 }
  /** The source, its fetches counted and timed (what a cold read waits for beyond the node). */
  const timed = (source: BlobSource): BlobSource => ({
    read: async (digest, offset, length, signal) => {
      const t0 = performance.now()
      const b = await source.read(digest, offset, length, signal)
      sourceStats.reads++; sourceStats.bytes += b.length; sourceStats.ms += performance.now() - t0
      log?.debug('lazy chunk fetched', { blob: digest, offset, length, ms: Math.round(performance.now() - t0) })
      return b
    },
    ...(source.prepare !== undefined ? { prepare: source.prepare.bind(source) } : {}),
    close: async () => { await source.close() }
  })
  const metaDir = join(init.dir, 'meta')
  /** blob digest -> its URL at the registry of the image that named it (the daemon's task origin) */
  const urls = new Map<string, string>()
  let served: Promise<{ server: BlobServer, store: ChunkStore, chunks: ChunkReader, source: BlobSource }> | undefined
  let closed = false
  let live: { server: BlobServer, store: ChunkStore } | undefined
  /** blob -> block address -> chunk extent, of every chunk served */
  const known = new Map<string, Map<number, ChunkExtent>>()
  /** prefetch traces (by layer digest) gone through or going: each once per process */
  const prefetched = new Set<string>()
  const prefetchStats = { chunks: 0, failed: 0 }

  /** The blob server, started at the first lazy layer (no FUSE for a node that only runs ordinary images). */
  const serving = async (): Promise<{ server: BlobServer, store: ChunkStore, chunks: ChunkReader, source: BlobSource }> => {
    served ??= (async () => {
      await mkdir(init.dir, { recursive: true, mode: 0o700 })
      // FUSE mounts of processes before this one are dead: abort and detach them (their layers are mounted again)
      for (const e of await readdir(init.dir)) {
        if (!e.startsWith('fuse-')) continue
        const p = join(init.dir, e)
        await abortFuse(p).catch(() => {})
        for (let i = 0; i < 8; i++) { if (await init.mounter.umount2(p, init.mounter.constants.MNT_DETACH).then(() => false, () => true)) break }
        await rm(p, { recursive: true, force: true }).catch(() => {})
      }
      const store = await openChunkStore({ dir: init.chunkDir, ...(init.chunkQuota !== undefined ? { quota: init.chunkQuota } : {}) })
      const blobUrl = (digest: string): string => {
        const u = urls.get(digest)
        if (u === undefined) throw new Error(`blob ${digest}: no image named it`)
        return u
      }
      const source = timed(init.source ?? (init.reader !== undefined
        ? readerBlobSource({ reader: init.reader, ranged: init.ranged !== false, blobUrl })
        : daemonBlobSource({ api: init.daemon, ranged: init.ranged !== false, blobUrl })))
      const chunks = chunkReader({ store, source, ...(log !== undefined ? { log: (o: Record<string, unknown>) => { log.warn('lazy layer', o) } } : {}) })
      const server = await serveBlobs({
        mountpoint: join(init.dir, `fuse-${randomBytes(6).toString('hex')}`),
        blobs: [],
        chunks,
        ...(init.readDeadlineMs !== undefined ? { readDeadlineMs: init.readDeadlineMs } : {}),
        ...(log !== undefined ? { log: (o: Record<string, unknown>) => { log.warn('lazy layer read', o) } } : {})
      })
      live = { server, store }
      return { server, store, chunks, source }
    })()
    served.catch(() => { served = undefined })
    return await served
  }

  /** Manifests by digest, as fetched and verified (every layer of an image asks for the same one). */
  const manifests = new Map<string, Promise<{ manifest: Manifest, chain: string[] } | undefined>>()
  const imageOf = async (client: RegistryClient, repository: string, reference: string, signal: AbortSignal | undefined): Promise<{ manifest: Manifest, chain: string[] } | undefined> => {
    const key = `${client.registry}/${repository}@${reference}`
    let p = manifests.get(key)
    if (p === undefined) {
      p = (async () => {
        signal?.throwIfAborted()
        const m = await client.getManifest(repository, reference) // verified against the digest it is named by
        const manifest = JSON.parse(m.bytes.toString('utf8')) as Manifest
        if (manifest?.annotations?.[ANNOTATION_FORMAT] === undefined || !Array.isArray(manifest.layers) || !DIGEST.test(manifest.config?.digest ?? '')) return undefined
        if (!(manifest.config.size <= MAX_CONFIG_BYTES)) throw new CorruptImageError(`${key}: config of ${manifest.config.size} bytes (at most ${MAX_CONFIG_BYTES})`)
        await mkdir(metaDir, { recursive: true, mode: 0o700 })
        const path = join(metaDir, `config-${randomBytes(6).toString('hex')}`)
        try {
          await client.getBlob(repository, manifest.config, path) // size and sha256 checked
          const config = JSON.parse(await readFile(path, 'utf8')) as { rootfs?: { diff_ids?: unknown } }
          const diffIds = config.rootfs?.diff_ids
          if (!Array.isArray(diffIds) || !diffIds.every(d => typeof d === 'string')) return undefined
          return { manifest, chain: chainIds(diffIds as string[]) }
        } finally { await rm(path, { force: true }) }
      })()
      // only digests are cached (a tag may move); failures are not
      if (DIGEST.test(reference)) {
        if (manifests.size >= 256) manifests.clear()
        manifests.set(key, p)
        p.catch(() => { manifests.delete(key) })
      }
    }
    return await p
  }

  const find = async (layer: RemoteLayer, signal: AbortSignal | undefined): Promise<Found | undefined> => {
    if (!DIGEST.test(layer.layerDigest) || !DIGEST.test(layer.ref)) return undefined
    const at = locate(layer.imageRef)
    if (at === undefined) return undefined
    const plain = init.insecure?.includes(at.registry) === true ? { plainHttp: true } : {}
    const client = new RegistryClient(at.registry, { ...(signal !== undefined ? { signal } : {}), ...plain })
    const reference = DIGEST.test(layer.manifestDigest) ? layer.manifestDigest : undefined
    if (reference === undefined) return undefined
    let image: { manifest: Manifest, chain: string[] } | undefined
    try {
      image = await imageOf(client, at.repository, reference, signal)
    } catch (err) {
      if ((err as Error).name === 'CorruptImageError' || (err as Error).name === 'RegistryDigestMismatchError') throw err
      // not reachable from here (containerd may use a mirror): containerd downloads the layer itself
      log?.info('registry mounter declines a layer: its manifest could not be fetched', { image: layer.imageRef, error: (err as Error).message })
      return undefined
    }
    if (image === undefined) return undefined
    const { manifest, chain } = image
    // the layer at the place in its image that containerd's chain id names
    // containerd leaves out of an image's layers what is no layer media type (the prefetch list), as here
    const layers = manifest.layers.filter(l => l.mediaType !== MEDIA_TYPE_PREFETCH)
    const index = layers.findIndex((l, i) => l.digest === layer.layerDigest && chain[i] === layer.ref)
    if (index === -1 || chain.length !== layers.length) return undefined
    return { client, background: new RegistryClient(at.registry, plain), repository: at.repository, manifest, layers, index }
  }

  /** A prefetch layer's trace (size-capped, verified, parsed and bounded). */
  const traceOf = async (f: Found, d: Descriptor): Promise<Trace> => {
    if (!(d.size > 0 && d.size <= MAX_PREFETCH_TRACE_BYTES)) throw new CorruptImageError(`prefetch layer ${d.digest}: ${d.size} bytes (at most ${MAX_PREFETCH_TRACE_BYTES})`)
    await mkdir(metaDir, { recursive: true, mode: 0o700 })
    const tmp = join(metaDir, `prefetch-${randomBytes(6).toString('hex')}`)
    try {
      await f.client.getBlob(f.repository, d, tmp) // size and sha256 checked
      return parseTrace(await readFile(tmp), `prefetch layer ${d.digest}`)
    } finally { await rm(tmp, { force: true }) }
  }

  /**
   * Fetches the chunks a trace names (in its order, PREFETCH_CONCURRENCY at a time) into the node chunk store,
   * in the background: a container's reads of the same chunks join these fetches, and chunks it reads first
   * are first in the list. `listed`: the entries that carry their extent, of the image's blobs, from the first
   * Prepare on (before any metadata layer is here); otherwise the others, by the extents of the layers mounted.
   * Chunks of blobs not served here are skipped; failures are left to the reads.
   */
  const prefetch = async (trace: Trace, layer: string, listed?: ReadonlySet<string>): Promise<void> => {
    const t0 = performance.now()
    const s = await serving().catch(() => undefined)
    if (s === undefined) return
    const todo = trace.chunks.flatMap(c => {
      const x = listedExtent(c)
      if (listed !== undefined) return x !== undefined && listed.has(c.blob) ? [{ blob: c.blob, e: x }] : []
      if (x !== undefined) return [] // fetched from the list
      const e = known.get(c.blob)?.get(c.blkaddr)
      return e !== undefined ? [{ blob: c.blob, e }] : []
    })
    if (todo.length === 0) return
    const { fetched, failed } = await readInOrder(s.chunks, todo, PREFETCH_CONCURRENCY, () => closed)
    prefetchStats.chunks += fetched; prefetchStats.failed += failed
    log?.info('lazy prefetch done', { layer, listed: trace.chunks.length, early: listed !== undefined, chunks: fetched, failed, ms: Math.round(performance.now() - t0) })
  }

  /** Prefetch lists being fetched, by layer digest. */
  const traces = new Map<string, Promise<Trace>>()
  const traceOnce = (f: Found, d: Descriptor): Promise<Trace> => {
    let t = traces.get(d.digest)
    if (t === undefined) {
      if (traces.size >= 256) traces.clear()
      traces.set(d.digest, t = traceOf(f, d))
      t.catch(() => { traces.delete(d.digest) })
    }
    return t
  }

  /**
   * At the first Prepare of an image's layers (once per process and manifest), everything its layers will need
   * is started at once rather than layer by layer: every blob's task (prepareBlobs), every metadata layer's
   * fetch (metaOf), the prefetch list, and the fetches of the listed entries that carry their extent, so the
   * link carries chunks from the first Prepare on, not from the top layer's mount (0.1-0.3 s of a start).
   */
  const begun = new Set<string>()
  const beginImage = (found: Found, manifestDigest: string): void => {
    if (begun.has(manifestDigest)) return
    // the first Prepare returns long before these fetches end (a blob layer at once): they must not stop with it
    const f = { ...found, client: found.background }
    if (begun.size >= 256) begun.clear()
    begun.add(manifestDigest)
    const blobs = new Set<string>()
    for (const l of f.layers) {
      if (l.mediaType === MEDIA_TYPE_CHUNK_BLOB) blobs.add(l.digest)
      else if (l.mediaType === MEDIA_TYPE_EROFS_META) { for (const b of blobsOf(l)) blobs.add(b); void metaOf(f, l).catch(() => {}) }
    }
    prepareBlobs(f, [...blobs])
    const d = f.manifest.layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)
    if (d === undefined) return
    void traceOnce(f, d).then(async t => { await prefetch(t, d.digest, blobs) }, () => {})
      .catch((err: unknown) => { log?.warn('lazy prefetch failed', { layer: d.digest, error: (err as Error).message }) })
  }

  /**
   * At the image's top layer (containerd prepares them in order: every layer below is mounted and its chunks
   * known), the image's prefetch list if it has one, once per process: fetched from the start of the layer's
   * Prepare (beside its metadata), then the chunks the list gives no extent for in the background once the layer
   * is mounted (`mounted`). The Prepare does not wait for any of it (it once waited for the list: 0.2 s of a
   * 100 Mbit/s pull).
   */
  const prefetchIfTop = (f: Found, mounted: Promise<unknown>): void => {
    const d = f.manifest.layers.find(l => l.mediaType === MEDIA_TYPE_PREFETCH)
    if (f.index !== f.layers.length - 1 || d === undefined || prefetched.has(d.digest)) return
    prefetched.add(d.digest)
    const trace = traceOnce({ ...f, client: f.background }, d)
    trace.catch(() => {})
    void mounted.then(async () => {
      let t: Trace
      try {
        t = await trace
      } catch (err) {
        // the image runs without it: its chunks are fetched as containers read them
        prefetched.delete(d.digest)
        log?.warn('lazy prefetch list not used', { layer: d.digest, error: (err as Error).message })
        return
      }
      await prefetch(t, d.digest)
    }, () => { prefetched.delete(d.digest) }).catch((err: unknown) => { log?.warn('lazy prefetch failed', { layer: d.digest, error: (err as Error).message }) })
  }

  /** Metadata layers being fetched, by digest (beginImage starts them; each layer's Prepare waits for its own). */
  const metas = new Map<string, Promise<string>>()
  /** The metadata layer on local disk (fetched once, verified before it appears under its digest). */
  const metaOf = async (f: Found, d: Descriptor): Promise<string> => {
    let p = metas.get(d.digest)
    if (p === undefined) {
      metas.set(d.digest, p = fetchMeta(f, d))
      const drop = (): void => { metas.delete(d.digest) } // a failure is tried again; a success is a file on disk
      p.then(drop, drop)
    }
    return await p
  }
  const fetchMeta = async (f: Found, d: Descriptor): Promise<string> => {
    const path = join(metaDir, DIGEST.exec(d.digest)![1]!)
    if (await stat(path).then(s => s.size === d.size, () => false)) return path
    if (!(d.size > 0 && d.size <= MAX_LAYER_META_BYTES)) throw new CorruptImageError(`metadata layer ${d.digest}: ${d.size} bytes (at most ${MAX_LAYER_META_BYTES})`)
    await mkdir(metaDir, { recursive: true, mode: 0o700 })
    const tmp = `${path}.part-${randomBytes(6).toString('hex')}`
    try {
      await f.client.getBlob(f.repository, d, tmp)
      await rename(tmp, path)
    } finally { await rm(tmp, { force: true }) }
    return path
  }

  /**
   * The daemon's task of each blob (its registration, the seed's order and the seed's look at the origin) is
   * set up as soon as a layer names the blob, while containerd goes on with the pull (the metadata layer is
   * fetched meanwhile), not on the container's first read; no chunk is fetched for it.
   */
  const prepareBlobs = (found: Found, blobs: string[]): void => {
    for (const b of blobs) urls.set(b, `${found.client.base}/v2/${found.repository}/blobs/${b}`)
    serving().then(({ source }) => {
      for (const b of blobs) void source.prepare?.(b, AbortSignal.timeout(PREPARE_TIMEOUT_MS)).catch((err: unknown) => { log?.debug('blob task not prepared', { blob: b, error: (err as Error).message }) })
    }, () => {})
  }

  return {
    // every mount of an earlier process read through that process's FUSE server, which is gone
    remountOnOpen: true,
    mount: async (layer: RemoteLayer, dir: string, opts: AbortOptions): Promise<boolean> => {
      if (closed) return false
      opts.signal?.throwIfAborted()
      const t0 = performance.now()
      const found = await find(layer, opts.signal)
      if (found === undefined) return false
      beginImage(found, layer.manifestDigest)
      const desc = found.layers[found.index]!
      if (desc.mediaType === MEDIA_TYPE_CHUNK_BLOB) { prepareBlobs(found, [desc.digest]); prefetchIfTop(found, Promise.resolve()); return true }
      if (desc.mediaType !== MEDIA_TYPE_EROFS_META) return false
      const tFound = performance.now()
      // the image's prefetch list (top layer) is fetched beside the metadata; its chunks once this layer is mounted
      const { promise: mounted, resolve: mountedNow, reject: notMounted } = Promise.withResolvers<void>()
      mounted.catch(() => {})
      prefetchIfTop(found, mounted)
      try {
        const blobs = blobsOf(desc)
        // the blob server starts (the first time) and the blobs' tasks are set up while the metadata layer is fetched and read
        const started = serving()
        started.catch(() => {})
        prepareBlobs(found, blobs)
        // the fetch may be beginImage's, which no Prepare's caller stops: this Prepare stops waiting when its caller goes
        const meta = await untilAborted(metaOf(found, desc), opts.signal)
        const tMeta = performance.now()
        const files = await blobFiles([{ meta, blobs }])
        const tFiles = performance.now()
        const { server } = await started
        const tServing = performance.now()
        server.add(files)
        for (const f of files) {
          const m = known.get(f.digest) ?? new Map<number, ChunkExtent>()
          for (const e of f.extents) m.set(e.blkaddr, e)
          known.set(f.digest, m)
        }
        await mountLayer({ meta, blobs: blobs.map(b => server.path(b)) }, dir, init.mounter)
        const ms = (a: number, b: number): number => Math.round(b - a)
        log?.info('lazy layer mounted', {
          layer: desc.digest, image: layer.imageRef, blobs: blobs.length,
          // where the mount's time went: manifest + config, metadata layer, chunk table, blob server, EROFS mount
          ms: { image: ms(t0, tFound), meta: ms(tFound, tMeta), chunkTable: ms(tMeta, tFiles), server: ms(tFiles, tServing), mount: ms(tServing, performance.now()) }
        })
      } catch (err) {
        notMounted(err)
        throw err
      }
      mountedNow()
      return true
    },
    unmount: async (dir: string): Promise<void> => {
      await init.mounter.umount2(dir, init.mounter.constants.MNT_DETACH)
    },
    stats: () => {
      let chunks = 0; let chunkBytes = 0
      for (const m of known.values()) for (const e of m.values()) { chunks++; chunkBytes += e.length }
      return {
        server: live?.server.stats() ?? { reads: 0, bytesRead: 0, failedReads: 0, refused: 0 },
        store: live?.store.stats() ?? { hits: 0, fetches: 0, fetchedBytes: 0, corrupt: 0, evicted: 0, bytes: 0 },
        chunks,
        chunkBytes,
        source: { ...sourceStats, ms: Math.round(sourceStats.ms) },
        prefetch: { ...prefetchStats }
      }
    },
    close: async () => {
      closed = true
      const s = await served?.catch(() => undefined)
      if (s === undefined) return
      await s.server.close()
      await s.chunks.close()
      await s.store.flush()
    }
  }
}
