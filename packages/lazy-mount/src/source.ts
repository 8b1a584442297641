/**
 * Where a chunk's stored bytes come from when the node chunk store does not have them: a byte range of an
 * OCI blob, named by its digest. The bytes are untrusted: the caller decodes and verifies them (decodeChunk)
 * against the chunk table of a metadata image whose digest the user's manifest named.
 *
 * - `localBlobSource(dir)`: the blobs of an OCI image layout on this host (`oci:DIR`).
 * - `daemonBlobSource(...)`: the local peer daemon's ranged reader (the swarm, then the origin): a task per
 *   blob named by its digest (`POST /api/v1/tasks`), then `GET /api/v1/tasks/:id/content` with a Range.
 */
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { unixFetch, type FetchInit, type TaskReader, type TaskRequest } from '@guoce/interface'
import { BlobSourceError } from './errors.js'
import { MAX_STORED_CHUNK, BLOB_PIECE_LENGTH } from './constants.js'

export interface BlobSource {
  /** Exactly `length` stored bytes of blob `digest` (`sha256:HEX`) from `offset`, or throws. */
  read: (digest: string, offset: number, length: number, signal: AbortSignal) => Promise<Buffer>
  /**
   * Optional: get ready to read blob `digest` (e.g. set up its download) without fetching any of its bytes, so
   * that the first read does not wait for that.
   */
  prepare?: (digest: string, signal: AbortSignal) => Promise<void>
  close: () => Promise<void>
}

const DIGEST = /^sha256:([0-9a-f]{64})$/

function hexOf (digest: string): string {
  const m = DIGEST.exec(digest)
  if (m === null) throw new BlobSourceError(`not a sha256 digest: ${digest}`)
  return m[1]!
}

function checkRange (offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 1 || length > MAX_STORED_CHUNK) {
    throw new BlobSourceError(`bad range ${offset}+${length}`)
  }
}

/** The blobs of an OCI image layout directory (`DIR/blobs/sha256/HEX`). */
export function localBlobSource (dir: string): BlobSource {
  const files = new Map<string, Promise<FileHandle>>()
  return {
    async read (digest, offset, length, signal) {
      checkRange(offset, length)
      signal.throwIfAborted()
      const hex = hexOf(digest)
      let fh = files.get(hex)
      if (fh === undefined) {
        fh = open(join(dir, 'blobs', 'sha256', hex), 'r')
        files.set(hex, fh)
        fh.catch(() => { files.delete(hex) })
      }
      const h = await fh
      const buf = Buffer.allocUnsafe(length)
      let got = 0
      while (got < length) {
        const { bytesRead } = await h.read(buf, got, length - got, offset + got)
        if (bytesRead === 0) break
        got += bytesRead
      }
      if (got !== length) throw new BlobSourceError(`blob ${digest}: ${got} bytes at ${offset}, wanted ${length}`)
      return buf
    },
    async close () {
      const all = [...files.values()]
      files.clear()
      await Promise.all(all.map(async p => { await (await p.catch(() => null))?.close() }))
    }
  }
}

export interface DaemonSourceInit {
  /** Local API base, e.g. `http://127.0.0.1:65001`, or `unix:/PATH` (the daemon's `--api unix:PATH`). */
  api: string
  /** The origin URL of a blob (`http(s)://REGISTRY/v2/REPO/blobs/DIGEST`). */
  blobUrl: (digest: string) => string
  /**
   * A blob's task as a ranged one (TaskRequest.ranged): the swarm and the origin send only the pieces the
   * mount reads; without it the first read of a blob starts its whole download in the background. Off by
   * default here; lazyMount and the snapshotter turn it on (packages/lazy-mount/test/swarm.spec.ts runs the
   * origin-down case both ways). A ranged task is named by the blob's URL (and the origin's validator), not
   * by its digest: see read().
   */
  ranged?: boolean
  /**
   * Piece length of a ranged blob task (TaskRequest.pieceLength, part of its id).
   * @default BLOB_PIECE_LENGTH
   */
  pieceLength?: number
}

/** Header that carries a task's access token (the peer daemon's local API). */
const ACCESS_HEADER = 'x-guoce-access'

/** One task per blob, started on first use and shared by concurrent reads; forgotten when starting it fails, or by drop(). */
function blobTasks<T> (start: (digest: string, signal: AbortSignal) => Promise<T>): { get: (digest: string, signal: AbortSignal) => Promise<T>, drop: (digest: string) => void, clear: () => void } {
  const tasks = new Map<string, Promise<T>>()
  return {
    get: async (digest, signal) => {
      let t = tasks.get(digest)
      if (t === undefined) {
        t = start(digest, signal)
        tasks.set(digest, t)
        t.catch(() => { tasks.delete(digest) })
      }
      return await t
    },
    drop: (digest) => { tasks.delete(digest) },
    clear: () => { tasks.clear() }
  }
}

/**
 * The daemon task of a blob: a ranged one (only the pieces read are fetched, in pieces of `pieceLength`), named
 * by its URL and the origin's validator, not by the digest: the daemon holds back the last bytes of digest-named
 * content until the whole content matched it, which a ranged task never fetches (every chunk is verified by the
 * caller against its chunk table either way); else one named by the digest, fetched whole on first read.
 */
function blobRequest (url: string, digest: string, ranged: boolean, pieceLength: number | undefined): TaskRequest {
  return ranged ? { url, ranged: true, pieceLength: pieceLength ?? BLOB_PIECE_LENGTH } : { url, digest }
}

/** Blobs through the local peer daemon's ranged reader: only the verified pieces a range needs are fetched. */
export function daemonBlobSource (init: DaemonSourceInit): BlobSource {
  const unix = init.api.startsWith('unix:') ? init.api.slice(5) : undefined
  const base = unix !== undefined ? 'http://localhost' : init.api.replace(/\/+$/, '')
  const fetch = async (url: string, req: FetchInit): Promise<Response> => unix !== undefined ? await unixFetch(unix, new URL(url).pathname, req) : await globalThis.fetch(url, req)
  const tasks = blobTasks(async (digest, signal): Promise<{ taskId: string, access: string }> => {
    const req = blobRequest(init.blobUrl(digest), digest, init.ranged === true, init.pieceLength)
    const res = await fetch(`${base}/api/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(req), signal })
    const body = await res.json().catch(() => undefined) as { taskId?: unknown, access?: unknown, error?: { message?: string } } | undefined
    if (!res.ok || typeof body?.taskId !== 'string' || typeof body.access !== 'string') {
      throw new BlobSourceError(`daemon refused a task for blob ${digest}: ${res.status} ${body?.error?.message ?? ''}`)
    }
    return { taskId: body.taskId, access: body.access }
  })
  return {
    async read (digest, offset, length, signal) {
      checkRange(offset, length)
      hexOf(digest)
      const t = await tasks.get(digest, signal)
      const res = await fetch(`${base}/api/v1/tasks/${t.taskId}/content`, { headers: { range: `bytes=${offset}-${offset + length - 1}`, [ACCESS_HEADER]: t.access }, signal })
      if (res.status !== 206) {
        await res.body?.cancel().catch(() => {})
        // a failed task is not asked again: the next attempt starts (or joins) a fresh one
        tasks.drop(digest)
        throw new BlobSourceError(`daemon: blob ${digest} range ${offset}+${length}: status ${res.status}`)
      }
      const buf = Buffer.allocUnsafe(length)
      let got = 0
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (got + part.length > length) throw new BlobSourceError(`daemon: blob ${digest} range ${offset}+${length}: more bytes than asked for`)
        buf.set(part, got)
        got += part.length
      }
      if (got !== length) throw new BlobSourceError(`daemon: blob ${digest} range ${offset}+${length}: ${got} bytes`)
      return buf
    },
    async prepare (digest, signal) {
      hexOf(digest)
      await tasks.get(digest, signal)
    },
    async close () { tasks.clear() }
  }
}

export interface ReaderSourceInit {
  /** The peer daemon's reader in this process (PeerDaemon.reader): no HTTP hop, no access token. */
  reader: TaskReader
  /** The origin URL of a blob (`http(s)://REGISTRY/v2/REPO/blobs/DIGEST`). */
  blobUrl: (digest: string) => string
  /** A blob's task as a ranged one, as daemonBlobSource's `ranged` (@default true here: the snapshotter's). */
  ranged?: boolean
  /** Piece length of a ranged blob task. @default BLOB_PIECE_LENGTH */
  pieceLength?: number
}

/**
 * Blobs through the daemon's reader called in process (the snapshotter runs in the daemon's process): the
 * same tasks and verified pieces as daemonBlobSource's local API, without an HTTP request and response per
 * chunk (bench/containerd, traced: a 573 KB chunk's response took 185 ms after its last piece was verified,
 * on the daemon's busy event loop).
 */
export function readerBlobSource (init: ReaderSourceInit): BlobSource {
  const tasks = blobTasks(async (digest, signal): Promise<string> => {
    try {
      return (await init.reader.stat({ request: blobRequest(init.blobUrl(digest), digest, init.ranged !== false, init.pieceLength), signal })).taskId
    } catch (err) {
      throw new BlobSourceError(`daemon refused a task for blob ${digest}: ${(err as Error).message}`)
    }
  })
  return {
    async read (digest, offset, length, signal) {
      checkRange(offset, length)
      hexOf(digest)
      const taskId = await tasks.get(digest, signal)
      let b: Uint8Array
      try {
        b = await init.reader.read({ taskId, offset, length, signal })
      } catch (err) {
        // a failed task is not asked again: the next attempt starts (or joins) a fresh one
        tasks.drop(digest)
        throw new BlobSourceError(`daemon: blob ${digest} range ${offset}+${length}: ${(err as Error).message}`)
      }
      if (b.length !== length) throw new BlobSourceError(`daemon: blob ${digest} range ${offset}+${length}: ${b.length} bytes`)
      return Buffer.from(b.buffer, b.byteOffset, b.length)
    },
    async prepare (digest, signal) {
      hexOf(digest)
      await tasks.get(digest, signal)
    },
    async close () { tasks.clear() }
  }
}
