/**
 * @packageDocumentation
 *
 * Content identity: OCI digests (`sha256:<hex>`) and their CIDs, task ids, piece layout, verification.
 *
 * ```ts
 * import { taskIdOf, pieceLayout, verifyPiece } from '@guoce/content'
 * const taskId = taskIdOf({ url: 'https://example.com/f.bin' })
 * const layout = pieceLayout(64 * 1024 * 1024) // { pieceLength: 1048576, pieceCount: 64 }
 * ```
 */
export * from './digest.js'
export * from './task.js'
export * from './piece.js'
export * from './pool.js'
