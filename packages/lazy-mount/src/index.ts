/**
 * @guoce/lazy-mount — `guoce image mount REF DIR`: a converted image's whole tree at once, its data fetched
 * chunk by chunk as it is read (EROFS mode: kernel EROFS over blobs served by FUSE; see lazy.ts).
 *
 * ```ts
 * import { lazyMount, lazyUmount } from '@guoce/lazy-mount'
 *
 * const m = await lazyMount('oci:/images/app:v1', '/mnt/app', { stateDir: '/var/lib/guoce/mounts', chunkDir: '/var/lib/guoce/chunks' })
 * // other processes read /mnt/app; this one serves the blobs (never read the mount from here)
 * console.log(m.stats())                 // reads, bytes read, chunks fetched, refused chunks
 * await m.unmount()                      // or, from another process: await lazyUmount('/mnt/app', stateDir, 10_000)
 * ```
 * `docker://REGISTRY/REPO:TAG` refs take `daemon: 'http://127.0.0.1:65001'`: metadata layers come from the
 * registry (verified), chunks through the daemon's ranged reader (the swarm, then the origin).
 */
export { lazyMount, unmountSync, fillChunks, blobFiles, blobsOf, type ResolvedLayer, type LazyMount, type LazyMountOptions, type LazyMountStats, type FillOptions, type FillResult } from './lazy.js'
export { lazyUmount, cleanupStale, listStates, findState, abortFuse, mountTable, type MountState } from './state.js'
export { chunkReader, readInOrder, type ChunkReader, type ChunkReaderInit } from './chunk-reader.js'
export { openChunkStore, type ChunkStore, type ChunkStoreInit, type ChunkStoreStats } from './chunk-store.js'
export { localBlobSource, daemonBlobSource, readerBlobSource, type BlobSource, type DaemonSourceInit, type ReaderSourceInit } from './source.js'
export { serveBlobs, mergeBlob, type BlobServer, type BlobServerInit, type BlobServerStats, type BlobFile } from './blob-server.js'
export { attachPrefetchTrace, entriesOfFiles, listedExtent, parseTrace, MEDIA_TYPE_PREFETCH, type Trace, type TraceEntry, type TraceExtent, type TraceFile } from './prefetch.js'
export { osImageMount, osImageUrl, type OsImageMount, type OsImageMountOptions, type OsImageStats } from './os-image.js'
export * from './errors.js'
export * from './constants.js'
