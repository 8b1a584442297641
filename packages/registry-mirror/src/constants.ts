/** Bounds and timings of the registry mirror (doc/LIMITS.md lists them). */
import { MAX_MANIFEST_SIZE } from '@guoce/image'

/**
 * Largest manifest (or index) the mirror reads from an upstream; a bigger one is refused with SIZE_INVALID
 * before it is read whole. The same cap as the image client's.
 * @default 4 MiB
 */
export const MAX_MANIFEST_BYTES = MAX_MANIFEST_SIZE
/**
 * Largest tag list or referrers index passed through, and the most read of an upstream's error body.
 * @default 4 MiB / 64 KiB
 */
export const MAX_LIST_BYTES = 4 * 1024 * 1024
export const MAX_ERROR_BODY_BYTES = 64 * 1024
/**
 * Manifests by digest kept in memory (verified against their digest before they are kept).
 * @default 64 MiB
 */
export const MANIFEST_CACHE_BYTES = 64 * 1024 * 1024
/**
 * How long a manifest by tag (or its HEAD) is served from the cache before the upstream is asked again.
 * @default 5 s
 */
export const TAG_CACHE_MS = 5_000
/**
 * How long an upstream's confirmation that a credential may read a repository is reused (per
 * credential, upstream and repository), before the swarm serves that credential its blobs again.
 * @default 30 s
 */
export const CONFIRM_TTL_MS = 30_000
/**
 * How long the mirror remembers that an upstream refuses anonymous reads of a repository's blobs (its
 * credentialed clients then read their own blob tasks without trying the shared anonymous one first).
 * @default 5 min
 */
export const ANON_REFUSED_MS = 5 * 60_000
/**
 * Confirmations and tag entries kept.
 * @default 4096
 */
export const MAX_CACHE_ENTRIES = 4096
/**
 * Upstream response headers and body gaps.
 * @default 30 s
 */
export const UPSTREAM_TIMEOUT_MS = 30_000
/**
 * A blob the mirror fetches from the upstream itself (the swarm could not serve it) is held up to this many
 * bytes before its status goes out: one this small is checked against its digest whole first (a wrong one
 * gets 502 DIGEST_INVALID); a bigger one streams, its last bytes held until the whole blob matched.
 * @default 4 MiB
 */
export const VERIFY_HOLD_BYTES = 4 * 1024 * 1024
/**
 * How long a blob read from the swarm waits while its task receives no piece at all before the mirror
 * calls the swarm unable to serve and fetches from the upstream itself (the reader's whileProgressing:
 * a slow swarm is waited for however long it takes, while it moves). The daemon itself turns to the
 * origin when there is no scheduler (15 s) or no seed (the scheduler's order), so this is a backstop.
 * @default 5 min
 */
export const SWARM_STALL_MS = 5 * 60_000
/** Port the mirror listens on by default (`guoce up`), on loopback. */
export const DEFAULT_MIRROR_PORT = 65002
