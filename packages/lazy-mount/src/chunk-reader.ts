/**
 * A verified chunk by its extent in a blob: node chunk store, else the blob source (decoded and checked by
 * decodeChunk of @guoce/image, asked again when the bytes do not verify, up to `fetchAttempts`, each within
 * `fetchTimeoutMs`). A chunk whose fetch just failed fails further reads at once for FAILED_CHUNK_TTL_MS.
 * Both FUSE servers (the blob server of EROFS mode, the filesystem of FUSE mode) read through one of these.
 */
import { decodeChunkAsync, type ChunkExtent } from '@guoce/image'
import type { ChunkStore } from './chunk-store.js'
import type { BlobSource } from './source.js'
import { ChunkUnavailableError } from './errors.js'
import { DEFAULT_FETCH_ATTEMPTS, DEFAULT_FETCH_TIMEOUT_MS, FAILED_CHUNK_TTL_MS } from './constants.js'

export interface ChunkReaderInit {
  store: ChunkStore
  source: BlobSource
  /** @default DEFAULT_FETCH_TIMEOUT_MS */
  fetchTimeoutMs?: number
  /** @default DEFAULT_FETCH_ATTEMPTS */
  fetchAttempts?: number
  /** First reads, in order (for a prefetch trace): called once per chunk on its first read. */
  onFirstRead?: (blob: string, e: ChunkExtent) => void
  log?: (obj: Record<string, unknown>) => void
}

export interface ChunkReader {
  /**
   * The chunk's verified bytes (shared: copy out of it, never write to it). `background` reads (prefetch)
   * are not recorded as first reads, and their failures do not fail a reader's next attempt at once.
   */
  read: (blob: string, e: ChunkExtent, opts?: { background?: boolean }) => Promise<Buffer>
  /** Stored chunks from a source that did not decode to their digest (refused, asked again). */
  refused: () => number
  /** Stored (compressed) bytes of the fetched chunks that verified. */
  fetchedStoredBytes: () => number
  close: () => Promise<void>
}

export function chunkReader (init: ChunkReaderInit): ChunkReader {
  const { store, source } = init
  const fetchTimeoutMs = init.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS
  const attempts = init.fetchAttempts ?? DEFAULT_FETCH_ATTEMPTS
  const closing = new AbortController()
  const failed = new Map<string, { until: number, err: Error }>()
  const seen = new Set<string>()
  let refused = 0
  let storedBytes = 0

  const fetchChunk = async (blob: string, e: ChunkExtent): Promise<Buffer> => {
    let last: unknown
    for (let i = 0; i < attempts; i++) {
      if (closing.signal.aborted) break
      const signal = AbortSignal.any([closing.signal, AbortSignal.timeout(fetchTimeoutMs)])
      try {
        const data = await decodeChunkAsync(e, await source.read(blob, e.storedOffset, e.storedLength, signal))
        storedBytes += e.storedLength
        return data
      } catch (err) {
        last = err
        if ((err as Error).name === 'ChunkDigestMismatchError') refused++
        init.log?.({ msg: 'chunk fetch failed', blob, blkaddr: e.blkaddr, attempt: i + 1, err: (err as Error).message })
      }
    }
    throw new ChunkUnavailableError(`blob ${blob} block ${e.blkaddr}: no verified bytes after ${attempts} attempts: ${(last as Error | undefined)?.message ?? 'closing'}`, { cause: last })
  }

  return {
    async read (blob, e, opts = {}) {
      const key = `${blob}/${e.blkaddr}`
      const background = opts.background === true
      if (!background && init.onFirstRead !== undefined && !seen.has(key)) { seen.add(key); init.onFirstRead(blob, e) }
      const f = failed.get(key)
      if (f !== undefined) {
        if (f.until > Date.now()) throw f.err
        failed.delete(key)
      }
      try {
        return await store.get(e.digest, e.length, async () => await fetchChunk(blob, e))
      } catch (err) {
        // a prefetch that failed does not make a reader's first attempt fail at once
        if (!background) {
          if (failed.size > 4096) failed.clear() // bounded: it only shortens retries
          failed.set(key, { until: Date.now() + FAILED_CHUNK_TTL_MS, err: err as Error })
        }
        throw err
      }
    },
    refused: () => refused,
    fetchedStoredBytes: () => storedBytes,
    close: async () => { closing.abort(); await source.close() }
  }
}

/**
 * A prefetch list's chunks read in the background, in the list's order, `concurrency` at a time, until the list
 * ends or `stopped()`: readers of those chunks join the fetches. Failures are counted, not thrown (the reads that
 * need the chunk try again). The lazy mount and the snapshotter's registry mounter both prefetch with this.
 */
export async function readInOrder (chunks: ChunkReader, todo: ReadonlyArray<{ blob: string, e: ChunkExtent }>, concurrency: number, stopped: () => boolean): Promise<{ fetched: number, failed: number }> {
  let next = 0
  let fetched = 0
  let failed = 0
  const worker = async (): Promise<void> => {
    while (next < todo.length && !stopped()) {
      const { blob, e } = todo[next++]!
      await chunks.read(blob, e, { background: true }).then(() => { fetched++ }, () => { failed++ })
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return { fetched, failed }
}
