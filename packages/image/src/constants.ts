/** EROFS block size used for every image we write (bytes). */
export const BLOCK_SIZE = 4096
/** log2(BLOCK_SIZE). */
export const BLOCK_BITS = 12

/**
 * Default chunk size (bytes): the dedup unit and the lazy-fetch unit. A power of two >= BLOCK_SIZE.
 * Measured in bench/convert (see doc/FORMAT.md for the table).
 * @default 1 MiB
 */
export const DEFAULT_CHUNK_SIZE = 1 << 20
/**
 * Default pack size, in chunk sizes: short chunks (small files, files' last chunks) are stored together in packs
 * of up to this many chunk sizes. Measured on a debootstrap python3 rootfs, zstd 3, 1 MiB chunks (doc/FORMAT.md):
 * packs of 1 chunk size store 113.2 MB, of 2 about 2 MB less (what takes the image under 0.95 of its gzip size).
 * @default 2
 */
export const DEFAULT_PACK_CHUNKS = 2
/** Smallest and largest chunk sizes accepted (EROFS chunk bits are 5 bits over the block size). */
export const MIN_CHUNK_SIZE = BLOCK_SIZE
export const MAX_CHUNK_SIZE = 1 << 30

/**
 * Uncompressed bytes a single layer may expand to before conversion stops with LayerTooLargeError.
 * @default 64 GiB
 */
export const DEFAULT_MAX_LAYER_SIZE = 64 * 1024 ** 3
/**
 * Members (tar entries) a single layer may hold.
 * @default 4,000,000
 */
export const DEFAULT_MAX_ENTRIES = 4_000_000
/**
 * Size of one pax extended header or GNU long name/link record.
 * @default 1 MiB
 */
export const MAX_EXTENDED_HEADER = 1024 * 1024
/** Longest path accepted (bytes), as Linux PATH_MAX. */
export const MAX_PATH = 4096
/** Longest name component (bytes), as EROFS_NAME_LEN. */
export const MAX_NAME = 255
