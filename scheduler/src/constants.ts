/**
 * Parents handed to a child at once (Dragonfly: candidateParentLimit): the first is the child's primary
 * parent, the others are backups it turns to when the primary stalls (see selectParents).
 * @default 3
 */
export const CANDIDATE_PARENT_LIMIT = 3
/**
 * Children of one task that a seed feeds while peers can feed the rest. The seed's uplink is usually
 * no faster than the origin's, so every second child of the seed is a piece the seed sends twice and
 * the whole swarm waits for (bench/fanout). Beyond the limit the seed is offered only to a child that
 * has no other candidate.
 * @default 1
 */
export const SEED_CHILD_LIMIT = 1
/**
 * Upload slots assumed for a host that did not announce any.
 * @default 8
 */
export const DEFAULT_UPLOAD_SLOTS = 8
/**
 * Times a child may ask for parents and get none before it is told to go back to source.
 * @default 5
 */
export const MAX_SCHEDULE_RETRIES = 5
/**
 * Distinct children that must blame a parent before the scheduler stops offering it for the task.
 * @default 2
 */
export const BAD_PARENT_REPORTS = 2
/**
 * How often piece announcements (have, digests) are batched out at the latest. A running scheduler also
 * flushes them right after the turn of the event loop that queued them (Scheduler.flushSoon), so a
 * have reaches a child one message hop after the parent reported the piece.
 * @default 20 ms
 */
export const ANNOUNCE_INTERVAL_MS = 20
/**
 * Retryable source failures (seed died, origin unreachable) before the task fails for everyone.
 * @default 3
 */
export const MAX_SOURCE_FAILURES = 3
/**
 * Candidate window of one decision (selectParents): besides the child's current parents it looks at the
 * first CANDIDATE_FIRST_SCAN peers to join the task (the seeds, usually), the CANDIDATE_BEFORE_SCAN peers
 * that joined just before the child (the ranking prefers the nearest earlier peers) and the
 * CANDIDATE_AFTER_SCAN that joined just after it (complete peers that joined later). A decision costs
 * O(window), not O(peers of the task).
 * @default 4
 */
export const CANDIDATE_FIRST_SCAN = 4
/** @default 48 */
export const CANDIDATE_BEFORE_SCAN = 48
/** @default 16 */
export const CANDIDATE_AFTER_SCAN = 16
/**
 * Peers a cycle check walks below a child before it gives up and refuses the candidate (refusing is
 * always safe). The walk only enters peers whose level is below the candidate's.
 * @default 64
 */
export const MAX_CYCLE_WALK = 64
/**
 * Peers (besides the source) up to which a task's peers form one pipeline in join order (the chain of
 * scheduling/). A chain delays its last peer by one piece time per hop, so a task with more peers
 * switches, once and for good, to striped trees of depth O(log N) (scheduling/forest.ts).
 * @default 16
 */
export const CHAIN_MAX_PEERS = 16
/**
 * Stripes of a large swarm (scheduling/forest.ts): piece n belongs to stripe n mod STRIPE_COUNT; every
 * peer forwards one stripe to up to STRIPE_COUNT children and takes each other stripe from one parent.
 * The parents message names each stripe's parent (Parents.stripe_count, Parent.stripes): a child sends
 * it every request for that stripe (packages/peer PeerTask).
 * @default 2
 */
export const STRIPE_COUNT = 2
/**
 * Backup parents handed to a peer of a large swarm on top of its stripe parents.
 * @default 1
 */
export const STRIPE_BACKUPS = 1
/**
 * Newest forwarders of a stripe looked at for a free place when a peer takes that stripe as a leaf.
 * @default 16
 */
export const STRIPE_LEAF_SCAN = 16
/**
 * Tasks one host may have registered at a time; one more is a broken bound (the host is dropped).
 * @default 4096
 */
export const MAX_HOST_TASKS = 4096
/**
 * Registers one host may send per minute (a fixed one-minute window); more is a broken bound.
 * A daemon re-registers every task it holds after a reconnect, so this is well above MAX_HOST_TASKS.
 * @default 8192
 */
export const MAX_REGISTERS_PER_MINUTE = 8192
/**
 * Refused messages (a register whose id does not derive from its fields, a source claim from a host
 * that is not a designated seed, a malformed layout) a host may send before it is dropped.
 * @default 3
 */
export const HOST_OFFENCE_LIMIT = 3
/**
 * A host dropped for offences or a broken bound is refused this long when it comes back.
 * @default 60 s
 */
export const HOST_BAN_MS = 60_000
/**
 * Dropped hosts remembered at once (oldest forgotten first).
 * @default 4096
 */
export const MAX_BANNED_HOSTS = 4096
/**
 * Bytes of a register's task reference (url, header names and values, digest, tag, version, credentials).
 * @default 16 KiB
 */
export const MAX_TASK_REF_BYTES = 16 * 1024
/**
 * Bitmaps of tasks whose layout is not known yet, kept per host (re-registrations after a restart);
 * beyond it a host's bitmap is dropped and the host counts as holding nothing until it re-registers.
 * @default 1 MiB
 */
export const MAX_HOST_PENDING_BITMAP_BYTES = 1024 * 1024
/**
 * A hello's addresses: at most MAX_HOST_ADDRS of at most MAX_HOST_ADDR_BYTES each; hostname, idc and
 * location at most MAX_HOST_LABEL_BYTES each. They are relayed to children in every parents message.
 * @default 16, 256 bytes, 256 bytes
 */
export const MAX_HOST_ADDRS = 16
export const MAX_HOST_ADDR_BYTES = 256
export const MAX_HOST_LABEL_BYTES = 256
/**
 * Inbound /guoce/scheduler/1 streams one connection may hold open (a host needs one; a reconnect may
 * briefly overlap the old one).
 * @default 2
 */
export const MAX_HOST_STREAMS = 2
/**
 * Tasks the scheduler tracks at once, over all hosts; a register of a new task beyond it is refused
 * (warned, not blamed: the requesting peer goes to the origin itself after SCHEDULER_WAIT_MS).
 * @default 16384
 */
export const MAX_TASKS = 16384
/**
 * yamux receive window of the scheduler's node: what a host may send ahead of what the scheduler read,
 * per stream (createNode streamWindowBytes; yamux's floor).
 * @default 256 KiB
 */
export const SCHEDULER_STREAM_WINDOW_BYTES = 256 * 1024
/**
 * Registers a host's stream is read at: a token bucket of REGISTER_BURST refilled at this rate; while
 * it is empty the stream is not read. Keeps a flood's garbage (id checks, tasks) to a pace the garbage
 * collector absorbs without growing the heap; a daemon re-registering 4096 tasks takes about 15 s.
 * @default 256 per second, burst 512
 */
export const REGISTER_RATE_PER_SECOND = 256
export const REGISTER_BURST = 512
/**
 * Streams a connection may open to the scheduler's node, all protocols together (yamux); each can hold
 * a receive window (256 KiB at first) of a host's data.
 * @default 4
 */
export const SCHEDULER_STREAMS_PER_CONNECTION = 4
/**
 * Scheduler streams one host may open per minute (a client re-dials with backoff, 100 ms .. 2 s); more
 * is a broken bound.
 * @default 20
 */
export const MAX_HOST_STREAMS_PER_MINUTE = 20
/**
 * New tasks (first registered by this host, not complete) one host may start per minute: each costs a
 * seed an origin fetch. Beyond, the register is refused (warned); the peer goes to the origin itself.
 * @default 600
 */
export const MAX_NEW_TASKS_PER_MINUTE = 600

/**
 * A parent that announced no new piece for this long and holds nothing its starving child lacks is not
 * offered to that child (a stopped parent: the child has nothing in flight to blame it for); the child
 * gets another parent, the seed if none. Chained parents announce a piece every few hundred ms while
 * they download.
 * @default 2000
 */
export const STALLED_PARENT_MS = 2_000

/**
 * Pieces one want message may name (a read's pieces that no parent holds); more is an offence.
 * @default 64
 */
export const MAX_WANT_PIECES = 64
