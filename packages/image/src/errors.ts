/**
 * Errors of the image format. Compare by `name`; `code` is stable for machine use.
 * Every conversion failure leaves no output file behind (outputs are written to a temp name
 * and renamed only when the whole layer converted).
 */
import { defineError } from '@guoce/interface'

/** The layer stream is not a valid tar archive (bad checksum, bad number field, bad pax record). */
export const InvalidTarError = defineError('InvalidTarError', 'ERR_TAR_INVALID')
/** The tar stream ended inside a header or a member's data (a header lied about its size, or the file was cut). */
export const TruncatedTarError = defineError('TruncatedTarError', 'ERR_TAR_TRUNCATED')
/** A member name or hardlink target climbs out of the root (`../`), or is empty/too long. */
export const UnsafePathError = defineError('UnsafePathError', 'ERR_TAR_UNSAFE_PATH')
/** A hardlink names a member that is not (yet) in the layer, or a directory. */
export const HardlinkTargetError = defineError('HardlinkTargetError', 'ERR_TAR_HARDLINK_TARGET')
/** The compressed layer is corrupt or truncated (gzip/zstd error, CRC mismatch). */
export const CorruptLayerError = defineError('CorruptLayerError', 'ERR_LAYER_CORRUPT')
/** The layer expands past the configured cap (uncompressed bytes, members, or metadata). */
export const LayerTooLargeError = defineError('LayerTooLargeError', 'ERR_LAYER_TOO_LARGE')
/** A tar feature this converter does not store (e.g. GNU sparse members, unknown xattr namespaces). */
export const UnsupportedTarError = defineError('UnsupportedTarError', 'ERR_TAR_UNSUPPORTED')
/** A tree that cannot be written as EROFS (name too long, xattr too large, ...). */
export const ErofsWriteError = defineError('ErofsWriteError', 'ERR_EROFS_WRITE')
/** An EROFS image or chunk table that is not well formed. The message names the structure. */
export const CorruptImageError = defineError('CorruptImageError', 'ERR_IMAGE_CORRUPT')
/** A chunk whose bytes do not hash to the digest in the chunk table. */
export const ChunkDigestMismatchError = defineError('ChunkDigestMismatchError', 'ERR_CHUNK_DIGEST')
/** A bad `oci:` or `docker://` reference, OCI layout or manifest. */
export const InvalidImageRefError = defineError('InvalidImageRefError', 'ERR_IMAGE_REF')
/** A compressed layer's bytes do not hash to the digest its manifest names. */
export const LayerDigestMismatchError = defineError('LayerDigestMismatchError', 'ERR_LAYER_DIGEST')
/** The registry (or its token service) answered 401: credentials missing or refused. */
export const RegistryAuthError = defineError('RegistryAuthError', 'ERR_REGISTRY_AUTH')
/** The registry answered 403: the credentials do not grant this action on this repository. */
export const RegistryDeniedError = defineError('RegistryDeniedError', 'ERR_REGISTRY_DENIED')
/** The registry answered 404: no such repository, tag, manifest or blob. */
export const RegistryNotFoundError = defineError('RegistryNotFoundError', 'ERR_REGISTRY_NOT_FOUND')
/** Any other failed registry exchange (unexpected status, unreachable host, malformed answer). */
export const RegistryError = defineError('RegistryError', 'ERR_REGISTRY')
/** A blob or manifest fetched from a registry does not hash to (or is not the size of) its descriptor. */
export const RegistryDigestMismatchError = defineError('RegistryDigestMismatchError', 'ERR_REGISTRY_DIGEST')
