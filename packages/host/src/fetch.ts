/**
 * Fill a task from its origin: the whole body when nothing is held yet (learning the layout),
 * else Range requests over runs of missing pieces (only under a version or digest, see fillFromSource).
 * With `ref.version` every request is conditional (source.ts) and a changed origin drops the task. Every piece is hashed from origin bytes; where a
 * digest is already known (from the seed) the bytes must match it.
 */
import { createHash } from 'node:crypto'
import { pieceLayout, verifyPiece, sha256, equalBytes, redactUrl, MIN_PIECE_LENGTH } from '@guoce/content'
import { ContentChangedError, DigestMismatchError, ContentLengthMismatchError, type AbortOptions, type TaskInfo } from '@guoce/interface'
import type { StoredTask, TaskStore, TaskMeta } from '@guoce/store'
import { openSource, pieces, type SourceRef } from './source.js'

export interface SourceFillInit extends AbortOptions {
  store: TaskStore
  taskId: string
  ref: SourceRef & { digest?: string }
  meta?: TaskMeta
  timeoutMs?: number
  /** the task, when its layout is already known */
  task?: StoredTask
  /** known piece digests (from the scheduler), index = piece number */
  digests?: Array<Uint8Array | undefined>
  onInfo?: (info: TaskInfo, task: StoredTask) => void
  onPiece?: (n: number, digest: Uint8Array, bytes: number) => void
  /** bytes received from the origin */
  onBytes?: (n: number) => void
}

/** The layout: the piece length the task's request names (TaskRequest.pieceLength, kept in its meta), else chosen from the length. */
function layoutOf (init: SourceFillInit, total: number): ReturnType<typeof pieceLayout> {
  return pieceLayout(total, init.meta?.pieceLength)
}

export async function fillFromSource (init: SourceFillInit): Promise<StoredTask> {
  // the task's version: the reference's, else the one stored with the task (meta)
  const version = init.ref.version ?? init.meta?.version ?? init.task?.meta.version
  if (version != null && version !== '' && init.ref.version == null) init = { ...init, ref: { ...init.ref, version } }
  try {
    // Range requests may only continue a task whose content is pinned, by a version (If-Range) or a
    // digest: without either, a resume across an origin change would join two contents in one file.
    // Then the whole body comes again, and held pieces must hash as before (else ContentChangedError).
    const pinned = (init.ref.version != null && init.ref.version !== '') || init.ref.digest != null
    if (init.task == null || !pinned) return await fetchWhole(init)
    await fetchMissing(init, init.task)
    return init.task
  } catch (err) {
    // nothing fetched under another content is kept
    if ((err as Error).name === ContentChangedError.name) await init.store.remove(init.taskId).catch(() => {})
    throw err
  }
}

async function fetchWhole (init: SourceFillInit): Promise<StoredTask> {
  const res = await openSource(init.ref, { signal: init.signal, timeoutMs: init.timeoutMs })
  if (res.length == null) throw new ContentLengthMismatchError(`origin sent no Content-Length for ${redactUrl(init.ref.url)}; unknown lengths are not supported`)
  const layout = layoutOf(init, res.length)
  const info: TaskInfo = { taskId: init.taskId, contentLength: res.length, ...layout }
  const task = await init.store.create(init.taskId, info, init.meta ?? {})
  init.onInfo?.(info, task)
  const whole = init.ref.digest != null ? createHash('sha256') : null
  let n = 0
  const counted = countBytes(res.body, init.onBytes)
  for await (const piece of pieces(counted, layout.pieceLength)) {
    whole?.update(piece)
    if (task.bitmap.has(n)) {
      // held from before: the origin must still send the same bytes
      const held = task.digests[n]
      if (held != null && !equalBytes(sha256(piece), held)) throw new ContentChangedError(`origin content of ${redactUrl(init.ref.url)} changed (piece ${n} differs from the one held); get it again`)
    } else {
      const digest = sha256(piece)
      const known = init.digests?.[n]
      if (known != null) verifyPiece(n, piece, known)
      await task.writePiece(n, piece, digest)
      init.onPiece?.(n, digest, piece.byteLength)
    }
    n++
  }
  if (whole != null && `sha256:${whole.digest('hex')}` !== init.ref.digest) {
    await init.store.remove(init.taskId)
    throw new DigestMismatchError(`content of ${redactUrl(init.ref.url)} does not match ${init.ref.digest}`)
  }
  await task.flush()
  return task
}

async function * countBytes (body: AsyncIterable<Uint8Array>, onBytes?: (n: number) => void): AsyncGenerator<Uint8Array> {
  for await (const c of body) { onBytes?.(c.byteLength); yield c }
}

async function fetchMissing (init: SourceFillInit, task: StoredTask): Promise<void> {
  const { pieceCount } = task.info
  let n = 0
  while (n < pieceCount) {
    if (task.bitmap.has(n)) { n++; continue }
    let end = n
    while (end < pieceCount && !task.bitmap.has(end)) end++
    await fetchRun(init, task, n, end)
    n = end
  }
  await task.flush()
}

/**
 * Pieces [n, end) of a task whose content is pinned (a version or a digest), in one Range request
 * (conditional on the version: If-Range / If-Match, source.ts). Pieces held already are skipped.
 */
export async function fetchRun (init: SourceFillInit, task: StoredTask, n: number, end: number): Promise<void> {
  const { pieceLength, contentLength } = task.info
  const start = n * pieceLength
  const stop = Math.min(contentLength, end * pieceLength)
  const res = await openSource(init.ref, { signal: init.signal, timeoutMs: init.timeoutMs, range: { start, end: stop } })
  const body = countBytes(res.body, init.onBytes)
  // the origin ignored Range: skip to the run's first piece
  let i = res.ranged ? n : 0
  if (res.totalLength != null && res.totalLength !== contentLength) throw new ContentLengthMismatchError(`origin length changed: ${res.totalLength} != ${contentLength}`)
  for await (const piece of pieces(body, pieceLength)) {
    if (i >= end) break
    if (i >= n && !task.bitmap.has(i)) {
      const digest = sha256(piece)
      const known = init.digests?.[i] ?? task.digests[i]
      if (known != null) verifyPiece(i, piece, known)
      await task.writePiece(i, piece, digest)
      init.onPiece?.(i, digest, piece.byteLength)
    }
    i++
  }
}

/**
 * A task to be fetched piece by piece: its layout from a first Range request. Only for content pinned by
 * a version or a digest (else two requests may see two contents). `firstPiece` (a task fetched whole):
 * the request asks for the smallest piece length's worth and keeps it as piece 0 when the layout's pieces
 * are that long (else those bytes are dropped: a task of more than TARGET_PIECE_COUNT MiB); without it
 * (a lazy task, which may never read piece 0) one byte. Content of length 0 is answered 416: `undefined`.
 */
export async function openLazy (init: SourceFillInit, o: { firstPiece?: boolean } = {}): Promise<StoredTask | undefined> {
  // the first piece's length where the content is large enough for the named or the smallest default length
  const firstLength = init.meta?.pieceLength ?? MIN_PIECE_LENGTH
  let res: Awaited<ReturnType<typeof openSource>>
  try {
    res = await openSource(init.ref, { signal: init.signal, timeoutMs: init.timeoutMs, range: { start: 0, end: o.firstPiece === true ? firstLength : 1 } })
  } catch (err) {
    if ((err as { status?: number }).status === 416) return undefined
    throw err
  }
  const total = res.ranged ? res.totalLength : res.length
  if (total == null) {
    void drain(res.body, init.onBytes, true)
    throw new ContentLengthMismatchError(`origin sent no length for ${redactUrl(init.ref.url)}; unknown lengths are not supported`)
  }
  const layout = layoutOf(init, total)
  const info: TaskInfo = { taskId: init.taskId, contentLength: total, ...layout }
  const task = await init.store.create(init.taskId, info, init.meta ?? {})
  init.onInfo?.(info, task)
  if (o.firstPiece === true && res.ranged && total > 0 && layout.pieceLength === firstLength) {
    // the answer is piece 0, whole
    const body = countBytes(res.body, init.onBytes)
    for await (const piece of pieces(body, layout.pieceLength)) {
      if (task.bitmap.has(0)) break
      const digest = sha256(piece)
      const known = init.digests?.[0] ?? task.digests[0]
      if (known != null) verifyPiece(0, piece, known)
      await task.writePiece(0, piece, digest)
      init.onPiece?.(0, digest, piece.byteLength)
      break
    }
  } else {
    // the byte, or the bytes of an origin that ignored Range, are not kept
    void drain(res.body, init.onBytes, !res.ranged)
  }
  return task
}

async function drain (body: AsyncIterable<Uint8Array>, onBytes: ((n: number) => void) | undefined, stopEarly: boolean): Promise<void> {
  try { for await (const c of body) { onBytes?.(c.byteLength); if (stopEarly) break } } catch {}
}
