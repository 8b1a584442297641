/**
 * Errors of the chunk index and delta updates. Compare by `name`.
 */
import { defineError } from '@guoce/interface'

/** A .gcidx that is not well-formed: truncated, trailing bytes, unknown version, hostile sizes, gaps or overlaps. */
export const IndexFormatError = defineError('IndexFormatError', 'ERR_INDEX_FORMAT')
/** An index that does not describe the content: a chunk or the whole file does not hash to what it lists. */
export const IndexMismatchError = defineError('IndexMismatchError', 'ERR_INDEX_MISMATCH')
/** A file too large to index within MAX_INDEX_CHUNKS, or chunker parameters out of bounds. */
export const IndexLimitError = defineError('IndexLimitError', 'ERR_INDEX_LIMIT')
