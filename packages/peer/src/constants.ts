/**
 * Pieces requested from one parent at a time.
 * @default 6
 */
export const PARENT_INFLIGHT = 6
/**
 * Pieces named in one request.
 * @default 2
 */
export const REQUEST_BATCH = 2
/**
 * Pieces requested in total at a time.
 * @default 32
 */
export const TOTAL_INFLIGHT = 32
/**
 * Base time a parent has to deliver a request, plus PIECE_TIMEOUT_PER_MIB_MS per requested MiB.
 * @default 10 s
 */
export const PIECE_TIMEOUT_MS = 10_000
export const PIECE_TIMEOUT_PER_MIB_MS = 4_000
/**
 * Time without a piece arriving after which a child also asks its backup parents, not only its primary.
 * A healthy primary on a 100 Mbit/s link delivers a 1 MiB piece every ~84 ms.
 * @default 400 ms
 */
export const STALL_MS = 400
/**
 * The stall limit grows with the task's pace: STALL_GAPS times the moving average (weight GAP_WEIGHT
 * per piece) of the time between its pieces' arrivals, when longer than STALL_MS, at most MAX_STALL_MS.
 * Six layer tasks sharing a node's 100 Mbit/s link get a 1 MiB piece every ~0.5 s each: a fixed 400 ms
 * had every child ask its backups (the seed among them) nearly all the time (bench/mirror: the seed
 * uploaded 2.9 times the image).
 * @default 4, 0.25, 2000 ms
 */
export const STALL_GAPS = 4
export const GAP_WEIGHT = 0.25
export const MAX_STALL_MS = 2_000
/**
 * Striped mode (a large swarm): time a stripe waits for the first piece its primary can offer, counted
 * from when another parent first offers one of the stripe's pieces, before any parent may serve it. A
 * primary deep in its stripe's tree gets its first piece one piece time per level after the seed
 * (about 1.7 s at depth 10 with 1 MiB pieces at 50 Mbit/s a stripe); once it has offered one, the
 * stripe stalls after k x STALL_MS without a piece.
 * @default 5 s
 */
export const STRIPE_FILL_MS = 5_000
/**
 * Time without anything requestable before the peer asks the scheduler for new parents.
 * @default 1 s
 */
export const STARVE_MS = 1_000
/**
 * Time to wait for the task's layout from the scheduler before fetching from the origin directly.
 * @default 15 s
 */
export const SCHEDULER_WAIT_MS = 15_000
/**
 * Pieces missing at which duplicate requests to a second parent are allowed (endgame).
 * @default 4
 */
export const ENDGAME_PIECES = 4
/**
 * Upload slots a daemon announces: the children the scheduler lets it have at once over all tasks,
 * counting backups (each child is handed up to three parents, a primary and two backups). Eight
 * children with their backups; with fewer, a node pulling several tasks at once (an image's layers)
 * ran out of slots and the scheduler sent the children to the seed (bench/mirror: 1451 refusals "no
 * free upload slot" in one 100 MiB pull of 8 nodes, the seed the primary of a third of the children).
 * @default 24
 */
export const UPLOAD_SLOTS = 24
/**
 * Delay that batches piece-finished reports to the scheduler. A report is what the scheduler relays to
 * the children as availability, so each millisecond here is one more per hop of a chain: 0 batches only
 * the pieces finished in the same turn of the event loop.
 * @default 0 ms
 */
export const REPORT_DELAY_MS = 0
/**
 * Time a parent with requests in flight may send no byte at all before it is blamed (ParentTimeoutError,
 * reported as a bad parent) and its pieces are asked of others. A healthy parent sends a piece's bytes as
 * a stream, so even a slow link moves bytes well within it; a hung (e.g. SIGSTOPped) parent does not.
 * @default 3 s
 */
export const PARENT_STALL_MS = 3_000
/**
 * Interval of the check for stalled parents (one timer per running download).
 * @default 500 ms
 */
export const PARENT_STALL_CHECK_MS = 500
/**
 * Longest a read waits for any one piece it needs (or for the task's layout) before it fails with
 * ReadTimeoutError. Per wait, not per read: a stream of a large task is bounded per piece.
 * @default 60 s
 */
export const READ_TIMEOUT_MS = 60_000
/**
 * Pieces a read may have asked of one parent on top of PARENT_INFLIGHT (the parent serves them before
 * background requests, so they do not wait behind those).
 * @default 8
 */
export const READ_INFLIGHT = 8
/**
 * Pieces a stream waits for ahead of the one it is reading (they are requested at its priority too).
 * @default 4
 */
export const STREAM_READAHEAD_PIECES = 4
/**
 * Largest chunk a stream yields (a piece is cut into chunks of at most this).
 * @default 1 MiB
 */
export const STREAM_CHUNK_BYTES = 1024 * 1024
/**
 * Largest ranged read (one buffer); larger ranges are for `stream`.
 * @default 64 MiB
 */
export const MAX_READ_BYTES = 64 * 1024 * 1024

/**
 * A lazy (ranged-read) task asks the scheduler again for a wanted piece no parent holds after this long.
 * @default 1000
 */
export const WANT_RETRY_MS = 1_000
/** Pieces per want message (the scheduler's MAX_WANT_PIECES). */
export const MAX_WANT_PIECES = 64

/**
 * Requests with `fetch` one task keeps in flight to its seed (fetchFromSeed), each for a run of at most
 * SEED_FETCH_RUN adjacent pieces; within the parent's MAX_PENDING_REQUESTS_PER_STREAM (32) with room for
 * ordinary requests on the same connection.
 * @default 16
 */
export const SEED_FETCH_REQUESTS = 16
/** @default 8 pieces */
export const SEED_FETCH_RUN = 8
