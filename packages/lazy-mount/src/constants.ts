/**
 * Bounds of the lazy mount, each a named default (doc/LIMITS.md lists them).
 */

/**
 * Bytes of verified chunks the node chunk store keeps on disk; least recently used chunks that no mount
 * pins are evicted past it.
 * @default 10 GiB
 */
export const DEFAULT_CHUNK_STORE_QUOTA = 10 * 1024 ** 3

/**
 * Bytes of verified chunks kept in memory by a serving process (FUSE reads are at most 128 KiB, chunks
 * 1 MiB by default: one chunk serves several reads without re-reading and re-hashing its file).
 * @default 64 MiB
 */
export const DEFAULT_MEMORY_CACHE = 64 * 1024 * 1024

/**
 * Most bytes of a blob's view the blob server fetches ahead of a sequential reader (reads that start where the
 * previous read of that blob ended, READAHEAD_MIN_RUN and more): the chunks after the one read are fetched in
 * the background, so the kernel's 128 KiB reads find them verified in memory (bench/lazy-read). Within
 * DEFAULT_MEMORY_CACHE.
 * @default 8 MiB
 */
export const DEFAULT_READAHEAD = 8 * 1024 * 1024

/**
 * Bytes a reader must have read in one sequential run of a blob before the blob server reads ahead of it, and
 * the first read-ahead window (it grows with the run up to DEFAULT_READAHEAD): small-file reads fetch nothing extra.
 * @default 1 MiB
 */
export const READAHEAD_MIN_RUN = 1024 * 1024

/**
 * Longest one fetch of a chunk's stored bytes may take (local blob file or the daemon's ranged reader).
 * @default 30 s
 */
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000

/**
 * Fetches of one chunk before its read fails with EIO: a source that returned bytes that do not match the
 * chunk's digest, or failed, is asked again this many times in all.
 * @default 3
 */
export const DEFAULT_FETCH_ATTEMPTS = 3

/**
 * Longest one FUSE read may wait, all fetches included, before the reader gets EIO.
 * @default 60 s
 */
export const DEFAULT_READ_DEADLINE_MS = 60_000

/**
 * Longest `guoce image umount` waits for the serving process to undo its mounts before it kills it and
 * undoes them itself.
 * @default 10 s
 */
export const UMOUNT_GRACE_MS = 10_000

/**
 * Piece length of a blob's ranged task on the daemon (TaskRequest.pieceLength): every chunk read moves the
 * whole pieces its compressed extent touches, and a lazily read blob's chunks are a few KiB to 1 MiB at
 * scattered offsets. bench/containerd (python3 start-up, 121 MB blob): 23 MB of pieces crossed the link
 * at the default 1 MiB, 9 MB at 128 KiB.
 * @default 128 KiB
 */
export const BLOB_PIECE_LENGTH = 128 * 1024

/** Largest chunk a source may hand over (the format's largest chunk size). */
export const MAX_STORED_CHUNK = 1 << 30

/**
 * A chunk whose fetch just failed (every attempt) fails further reads at once for this long: the kernel
 * retries a failed read (readahead, then the read itself), and each retry would otherwise wait out every
 * attempt again, multiplying how long a reader waits for its EIO.
 * @default 2 s
 */
export const FAILED_CHUNK_TTL_MS = 2_000

/**
 * Chunks `guoce image pull` fetches at once.
 * @default 4
 */
export const FILL_CONCURRENCY = 4

/**
 * Chunks of an image's prefetch list a mount fetches at once (in the list's order; readers of those chunks join
 * the fetches). The snapshotter's registry mounter has its own (packages/snapshotter PREFETCH_CONCURRENCY).
 * @default 8
 */
export const PREFETCH_CONCURRENCY = 8

/**
 * Entries of a prefetch trace (recorded, attached to an image, or read from one).
 * @default 1,000,000
 */
export const MAX_TRACE_ENTRIES = 1_000_000

/**
 * Longest entry a prefetch list may give an extent for (fetched before any chunk table names it): 64 MiB, the
 * longest pack of 4 MiB chunks (16 chunk sizes).
 * @default 67,108,864
 */
export const MAX_PREFETCH_ENTRY_BYTES = 64 * 1024 * 1024

/**
 * View blocks a trace recorder remembers as read (4 KiB each: 8 GiB), to find the files a workload read.
 * @default 2,097,152
 */
export const MAX_TRACE_BLOCKS = 2 * 1024 * 1024

/**
 * Fetched chunks handed to readers before they are on disk: past this, a fetch waits for its own write.
 * @default 16
 */
export const MAX_PENDING_WRITES = 16
