/**
 * @packageDocumentation
 *
 * Node-local content store. Each task lives in `<dataDir>/tasks/<id[0:2]>/<id>/`:
 * `data` (sparse file of the full content length), `state` (piece bitmap + piece digests, written
 * atomically), `meta.json` (layout and source). A piece counts as stored only once its bytes
 * were fdatasync'ed before the state that lists it was renamed into place, so a process killed at
 * any moment restarts with every listed piece intact.
 *
 * ```ts
 * const store = await openStore({ dir: '/var/lib/guoce' })
 * const task = await store.create(taskId, { contentLength, pieceLength, pieceCount }, { url })
 * await task.writePiece(0, bytes, digest)
 * ```
 */
export * from './task-store.js'
