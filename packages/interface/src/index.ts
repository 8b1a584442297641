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
