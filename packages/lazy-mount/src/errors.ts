/**
 * Errors of the lazy mount. Compare by `name`; every one of them reaches a FUSE reader as EIO.
 */
import { defineError } from '@guoce/interface'

/** No source could hand over a chunk's verified bytes within the fetch attempts and the read deadline. */
export const ChunkUnavailableError = defineError('ChunkUnavailableError', 'ERR_CHUNK_UNAVAILABLE')
/** A source answered with the wrong number of bytes, or a status other than the range asked for. */
export const BlobSourceError = defineError('BlobSourceError', 'ERR_BLOB_SOURCE')
/** `guoce image mount` / `umount` asked for something that cannot be done (a busy target, no such mount). */
export const LazyMountError = defineError('LazyMountError', 'ERR_LAZY_MOUNT')
