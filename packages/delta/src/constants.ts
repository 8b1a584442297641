/**
 * Bounds and defaults of the content-defined chunk index (doc/LIMITS.md lists them).
 */

/**
 * Default FastCDC parameters: min / average / max chunk length (min = avg/4, max = 4 avg). 16 KiB average:
 * bench/delta measured the bytes a delta update needs at 8 to 128 KiB averages on EROFS and ext4 images of
 * two debootstrap trees; the smaller the chunks the fewer bytes (16 KiB: 0.66x the bytes of 64 KiB on EROFS),
 * while the index stays small (44 bytes a chunk: 0.23% of the image at 16 KiB). Fetched through the swarm,
 * ranges are rounded up to whole pieces (1 MiB at least), which the average hardly changes.
 * @default 4 KiB / 16 KiB / 64 KiB
 */
export const DEFAULT_MIN_CHUNK = 4 * 1024
export const DEFAULT_AVG_CHUNK = 16 * 1024
export const DEFAULT_MAX_CHUNK = 64 * 1024

/** Smallest `min` an index may declare. @default 1 KiB */
export const MIN_CHUNK_FLOOR = 1024
/** Largest `max` (so the largest chunk) an index may declare: one chunk is held in memory at a time. @default 4 MiB */
export const MAX_CHUNK_LENGTH = 4 * 1024 * 1024
/**
 * Most chunks one index may list: 2^20 (46 MiB of index; 16 GiB of file at the default 16 KiB average,
 * 64 GiB at 64 KiB: larger images take a larger --avg).
 * `guoce index` refuses a file that needs more; a parser refuses a header that declares more before it
 * allocates anything.
 * @default 1048576
 */
export const MAX_INDEX_CHUNKS = 1024 * 1024

/** Bytes of the fixed header: magic, version, algorithm, min/avg/max, count, file size, file sha256. */
export const INDEX_HEADER_BYTES = 72
/** Bytes of one entry: u64 offset, u32 length, sha256. */
export const INDEX_ENTRY_BYTES = 44
/** Largest index file: header + MAX_INDEX_CHUNKS entries. */
export const MAX_INDEX_BYTES = INDEX_HEADER_BYTES + MAX_INDEX_CHUNKS * INDEX_ENTRY_BYTES
export const INDEX_MAGIC = 'GUOCEIDX'
export const INDEX_VERSION = 1
/** FastCDC with the gear table of gear.ts, normalized chunking level 2. */
export const ALGORITHM_FASTCDC_V1 = 1
/** The name `guoce index FILE` writes and `guoce get URL --seed-from OLD` fetches: URL + this suffix. */
export const INDEX_SUFFIX = '.gcidx'

/**
 * Missing chunks next to each other are fetched as one range, up to this many bytes.
 * @default 8 MiB
 */
export const MAX_FETCH_RUN = 8 * 1024 * 1024
/** Ranges of the new file fetched at once during a delta update. @default 4 */
export const DELTA_FETCH_CONCURRENCY = 4
