/**
 * @packageDocumentation
 *
 * Cross-package contracts of Guoce: error classes (compared by `name`), `AbortOptions`,
 * `Startable`, and the shapes that pass between the scheduler, seed peers and peer daemons.
 *
 * ```ts
 * import { PieceDigestMismatchError } from '@guoce/interface'
 * try { ... } catch (err: any) { if (err.name === PieceDigestMismatchError.name) { ... } }
 * ```
 */

export * from './errors.js'
export { unixFetch, type FetchInit } from './unix-fetch.js'

export interface AbortOptions {
  signal?: AbortSignal
}

export interface Startable {
  start(): Promise<void>
  stop(): Promise<void>
}

/** Minimal structured logger; components get a child with their own `component` field. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
  child(fields: Record<string, unknown>): Logger
}

/** What a peer asks for: a URL (plus headers), optionally pinned to a content digest. */
export interface TaskRequest {
  url: string
  headers?: Record<string, string>
  /** `sha256:<hex>` of the whole content, when known */
  digest?: string
  /** free-form tag that separates otherwise identical URLs */
  tag?: string
  /**
   * The origin's validator of the content a URL task stands for (`etag:"..."` or `lm:<Last-Modified>`),
   * read from the origin by the requesting daemon; part of the task id, so a changed origin is a new task.
   */
  version?: string
  /**
   * Ranged reads only: fetch just the pieces that reads (and prefetches) ask for, not the whole task.
   * Not part of the task id; a request for the same task without it turns the download into a full one.
   */
  ranged?: boolean
  /**
   * The piece length this task's layout must have: a power of two in [64 KiB, 16 MiB] (grown where the
   * content would need more than 2^20 pieces); part of the task id. For content read by small ranges (an
   * image blob mounted lazily), where every read moves whole pieces. Unset: chosen from the content length
   * (1 MiB to 16 MiB).
   */
  pieceLength?: number
}

/** Piece layout of a task, fixed by the seed peer from the content length. */
export interface TaskInfo {
  taskId: string
  contentLength: number
  pieceLength: number
  pieceCount: number
}

export type PeerState = 'pending' | 'running' | 'back-to-source' | 'succeeded' | 'failed' | 'left'

/** Progress of one task as the local API reports it. */
export interface TaskProgress {
  taskId: string
  state: PeerState
  contentLength?: number
  pieceCount?: number
  piecesDone: number
  bytesDone: number
  /** pieces taken from the local store when the task (re)started */
  piecesFromStore: number
  piecesFromPeers: number
  piecesFromSource: number
  error?: { name: string, code: string, message: string }
}

/**
 * How urgently a read needs its pieces. `on-demand` (someone waits: a FUSE read, an HTTP response)
 * outranks `prefetch`, which outranks `background` fill, at the child and at the parent.
 */
export type ReadPriority = 'on-demand' | 'prefetch' | 'background'

/**
 * Which task a read is of: a task already started on this host (or held whole in its store), by id;
 * or a request, which starts the download or joins the running one.
 */
export type ReadTarget = { taskId: string, request?: undefined } | { request: TaskRequest, taskId?: undefined }

/** What every read takes besides its range. */
export interface ReadOptions extends AbortOptions {
  /** @default 'on-demand' */
  priority?: ReadPriority
  /**
   * Longest wait for any one piece the read needs (and for the task's layout); beyond it the read
   * fails with ReadTimeoutError. @default the reader's own (READ_TIMEOUT_MS in packages/peer)
   */
  timeoutMs?: number
  /**
   * Count `timeoutMs` from the task's last progress (the last piece it received, or the start of the
   * wait if later) instead of from the start of the wait: a read of a slow task that still receives
   * pieces waits for it; a read of a task that receives nothing for `timeoutMs` fails as before. For a
   * caller whose alternative to waiting is to load the origin again (the registry mirror). @default false
   */
  whileProgressing?: boolean
}

/** A ranged read: `length` bytes from `offset` (fewer only where the content ends). */
export type RangeRead = ReadTarget & ReadOptions & { offset: number, length: number }

/** An ordered stream of the bytes from `offset` (default 0) to `end` (exclusive; default the content's end). */
export type StreamRead = ReadTarget & ReadOptions & { offset?: number, end?: number }

/**
 * The reader: the one way to read a task's bytes, whether the task is complete or still downloading.
 * Every byte it returns belongs to a piece that was verified (sha256 against the source's digest)
 * before it was stored. A read waits for the pieces it needs, which are fetched ahead of other
 * work at its priority; it wakes when a piece arrives (no polling), fails when the task fails (with
 * the task's error), fails with ReadTimeoutError when a piece it needs does not arrive within its
 * timeout, and with AbortError when its signal aborts (it then stops waiting).
 *
 * Callers: the local API's content route (`stat` for the length, then `stream`), a FUSE read handler
 * (`read` of the kernel's offset and size), the CLI and the registry mirror (`stream`).
 *
 * ```ts
 * const info = await reader.stat({ taskId })
 * const head = await reader.read({ taskId, offset: 0, length: 4096, signal })
 * for await (const chunk of reader.stream({ taskId, offset: 0, signal })) res.write(chunk)
 * ```
 */
export interface TaskReader {
  /** The task's layout (content length, pieces), once the source has announced it. */
  stat(target: ReadTarget & ReadOptions): Promise<TaskInfo>
  /** Verified bytes of [offset, offset + length), clipped to the content's end; resolves once all its pieces are held. */
  read(range: RangeRead): Promise<Uint8Array>
  /** The bytes of [offset, end) in order, each chunk yielded as soon as its piece is verified. */
  stream(range: StreamRead): AsyncIterable<Uint8Array>
}
