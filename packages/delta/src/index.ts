/**
 * @guoce/delta — content-defined chunk indexes (FastCDC, the .gcidx format) and delta updates of large
 * files (OS images): only the chunks an old copy does not hold are fetched.
 *
 * ```ts
 * import { chunkFile, indexOf, encodeIndex, parseIndex, applyDelta, DEFAULT_PARAMS } from '@guoce/delta'
 *
 * const ix = indexOf(await chunkFile('os-v2.erofs'), DEFAULT_PARAMS)      // guoce index os-v2.erofs
 * await writeFile('os-v2.erofs.gcidx', encodeIndex(ix))
 * // elsewhere, holding os-v1.erofs: the bytes of v2 no v1 chunk has come from `source` (ranges)
 * const r = await applyDelta({ index: parseIndex(bytes), old: 'os-v1.erofs', out: tmp, source })
 * ```
 */
export * from './constants.js'
export * from './errors.js'
export { chunkFile, cutBuffer, nativeCutter, checkParams, masks, DEFAULT_PARAMS, READ_BUFFER, type Chunk, type ChunkParams, type ChunkFileResult, type Cutter } from './fastcdc.js'
export { GEAR } from './gear.js'
export { encodeIndex, parseIndex, indexOf, chunkDigest, fileDigest, sha256, type ChunkIndex } from './gcidx.js'
export { planDelta, applyDelta, type RangeSource, type DeltaStep, type DeltaPlan, type ApplyDeltaInit, type DeltaResult } from './delta.js'
