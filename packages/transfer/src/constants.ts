/** Protocol ids. */
export const SCHEDULER_PROTOCOL = '/guoce/scheduler/1'
export const PIECE_PROTOCOL = '/guoce/piece/1'
export const PIECE_DATA_PROTOCOL = '/guoce/piece-data/1'

/**
 * Largest length-prefixed control message accepted on any stream.
 * @default 16 MiB (a full piece-digest list of a 1 TiB task at 16 MiB pieces is 2 MiB)
 */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024
/**
 * Largest piece a parent may send.
 * @default 64 MiB
 */
export const MAX_PIECE_BYTES = 64 * 1024 * 1024
/**
 * Pieces one piece request may name.
 * @default 64
 */
export const MAX_PIECES_PER_REQUEST = 64
/**
 * Requests a child may have outstanding on one parent stream; more are refused.
 * @default 32
 */
export const MAX_PENDING_REQUESTS_PER_STREAM = 32
/**
 * Interval of keep-alive messages on the scheduler stream.
 * @default 10 s
 */
export const KEEPALIVE_INTERVAL_MS = 10_000
/**
 * Idle timeout of TCP sockets; keep-alives keep the scheduler stream above it.
 * @default 60 s
 */
export const SOCKET_INACTIVITY_TIMEOUT_MS = 60_000
/**
 * How long a data-channel token handed out on /guoce/piece-data/1 stays good (single use).
 * @default 10 s
 */
export const DATA_CHANNEL_TOKEN_TTL_MS = 10_000
/**
 * Largest plaintext of one AES-256-GCM record on a secure data channel (Noise's records are 64 KiB).
 * @default 1 MiB
 */
export const DATA_CHANNEL_RECORD_BYTES = 1024 * 1024
/**
 * Socket buffer (Node's high-water mark, each direction) of a data channel: a parent queues the next
 * piece while the kernel drains the current one, so the pipe never runs dry between pieces.
 * @default 4 MiB
 */
export const DATA_CHANNEL_BUFFER_BYTES = 8 * 1024 * 1024
/**
 * Read buffer of a child's data channel: the kernel copies received bytes into this one buffer, the
 * piece parser copies them out into the piece's own (pooled) buffer while hashing them.
 * @default 256 KiB
 */
export const DATA_CHANNEL_READ_BYTES = 256 * 1024
/**
 * Bytes of piece requests a parent buffers per piece stream or data channel (requests received and not
 * yet answered), and the largest record it accepts on a secure data channel: a child sends only piece
 * requests (under 1 KiB each, at most MAX_PENDING_REQUESTS_PER_STREAM outstanding). More destroys the
 * channel.
 * @default 64 KiB
 */
export const PIECE_REQUEST_BUFFER_BYTES = 64 * 1024
/**
 * Largest piece request message (a task id and at most MAX_PIECES_PER_REQUEST numbers).
 * @default 4 KiB
 */
export const MAX_PIECE_REQUEST_BYTES = 4 * 1024
/**
 * Largest reason text of a refused piece frame.
 * @default 1 KiB
 */
export const MAX_REFUSED_REASON_BYTES = 1024
/**
 * Time a TCP connection to a data-channel port has to present its token; then it is destroyed.
 * @default 5 s
 */
export const DATA_CHANNEL_HELLO_MS = 5_000
/**
 * Inside a started record, time without a byte after which a data channel is destroyed (a half-sent
 * record holds a buffer of its size).
 * @default 5 s
 */
export const DATA_CHANNEL_STALL_MS = 5_000
/**
 * Time with bytes queued to send and none taken by the kernel (the other side reads nothing) after which
 * a data channel is destroyed (PeerStallError). Longer than DATA_CHANNEL_STALL_MS: one TCP flow of a
 * congested link (tc drops, retransmission back-off) takes nothing for seconds, and what a child that
 * reads nothing holds meanwhile is bounded by HOST_UPLOAD_BUFFER_BYTES.
 * @default 30 s
 */
export const DATA_CHANNEL_WRITE_STALL_MS = 30_000
/**
 * Time without a byte either way, and nothing queued to send, after which a data channel (or a parent's
 * piece stream waiting for a request) is closed.
 * @default 30 s
 */
export const PIECE_CHANNEL_IDLE_MS = 30_000
/**
 * Data-channel sockets one parent holds at once (with their token and still waiting for it); more are
 * destroyed on accept.
 * @default 256
 */
export const DATA_CHANNEL_MAX_SOCKETS = 256
/**
 * Data-channel sockets still waiting for their token that one parent holds at once.
 * @default 64
 */
export const DATA_CHANNEL_MAX_UNAUTHENTICATED = 64
/**
 * Data channels one remote host may hold on one parent: tokens handed out and not yet used, plus open
 * channels. More offers are refused (the child stays on the libp2p stream).
 * @default 64
 */
export const DATA_CHANNEL_MAX_PER_PEER = 64
/**
 * A child that broke a bound of the piece protocol (PeerViolationError: oversized record or request,
 * bytes far ahead of the reader, a stalled record; or WRITE_STALL_STRIKES channels lost for reading
 * nothing of its answers) gets no piece stream and no data channel from that parent for this long.
 * @default 60 s
 */
export const PEER_VIOLATION_BAN_MS = 60_000
/**
 * Channels a child may lose for reading nothing of its answers (PeerStallError) within
 * PEER_VIOLATION_BAN_MS before it is banned like a violator. One stall is what a parent's own congested
 * uplink does to one of its flows (bench/mirror: every child of a seed feeding ~50 flows through a
 * 100 Mbit/s tbf was banned once, and the tasks waited the ban out); a child that never reads loses its
 * channel each time and is banned at the third.
 * @default 3
 */
export const WRITE_STALL_STRIKES = 3
/**
 * Hosts a parent remembers as banned at once (PEER_VIOLATION_BAN_MS); beyond, new violators are only
 * disconnected.
 * @default 4096
 */
export const MAX_BANNED_PEERS = 4096
/**
 * Bytes a parent may have queued to children across all its piece streams and data channels (plus
 * the pieces being read for them); above it, answering waits. Bounds what children that read slowly,
 * or not at all, can make a parent hold.
 * @default 128 MiB
 */
export const UPLOAD_BUFFER_BYTES = 128 * 1024 * 1024
/**
 * Bytes a parent may have queued to one remote host across all its piece streams and data channels;
 * above it, that host's answers wait (busy frames), others' do not. A child that reads nothing holds
 * this much of UPLOAD_BUFFER_BYTES, not all of it.
 * @default 16 MiB
 */
export const HOST_UPLOAD_BUFFER_BYTES = 16 * 1024 * 1024
/**
 * While a child's answers wait for room in the upload budget (or behind more urgent answers to other
 * children), its parent sends it a busy frame (kind 2, no body) this often: the parent is alive and
 * serving others, so the child's stall rule (PARENT_STALL_MS in packages/peer, no byte at all) does not
 * take it for a hung one. A stopped or hung parent sends nothing.
 * @default 1 s
 */
export const PIECE_BUSY_INTERVAL_MS = 1_000
/**
 * How often a parent over UPLOAD_BUFFER_BYTES looks again.
 * @default 10 ms
 */
export const UPLOAD_BUFFER_WAIT_MS = 10
/**
 * Largest message accepted on a /guoce/scheduler/1 stream, either way. The biggest legitimate ones are
 * a register's bitmap (MAX_TASK_PIECES / 8 = 128 KiB) and a digests batch (ANNOUNCE_BATCH pieces).
 * @default 1 MiB
 */
export const MAX_SCHEDULER_MESSAGE_BYTES = 1024 * 1024
/**
 * Pieces one have/digests/pieceDone announcement names; longer lists leave in several messages
 * (a digest costs about 36 bytes on the wire, so a batch stays far below MAX_SCHEDULER_MESSAGE_BYTES).
 * @default 8192
 */
export const ANNOUNCE_BATCH = 8192
/**
 * Most pieces of one task: the layout pieceLayout picks for the largest task (MAX_CONTENT_BYTES at
 * 16 MiB pieces). A layout with more is refused by the scheduler.
 * @default 2^20
 */
export const MAX_TASK_PIECES = 1 << 20
/**
 * Largest content length a source may announce.
 * @default 16 TiB
 */
export const MAX_CONTENT_BYTES = 16 * 1024 ** 4
/**
 * A scheduler stream on which nothing (not even a keepalive, sent every KEEPALIVE_INTERVAL_MS) arrives
 * for this long is dropped.
 * @default 30 s
 */
export const SCHEDULER_IDLE_TIMEOUT_MS = 30_000
/**
 * Once the first byte of a message arrived, the rest must follow within this time, else the stream is
 * dropped (a half-sent message holds memory).
 * @default 10 s
 */
export const MESSAGE_STALL_TIMEOUT_MS = 10_000
/**
 * Bytes of scheduler messages being received at once, over all hosts: a message whose length does not
 * fit ends its stream. Together with MAX_SCHEDULER_MESSAGE_BYTES and MESSAGE_STALL_TIMEOUT_MS it bounds
 * what half-sent messages can hold, whatever the number of connections.
 * @default 4 MiB
 */
export const SCHEDULER_READ_BUDGET_BYTES = 4 * 1024 * 1024
/**
 * Largest write the cluster-key layer (libp2p pnet) encrypts at once (createNode).
 * @default 256 KiB
 */
export const PNET_MAX_WRITE_BYTES = 256 * 1024
/**
 * Bytes received on a scheduler stream and not yet read before the stream is paused (pausingSource):
 * the sender then waits on the muxer's window.
 * @default 64 KiB
 */
export const MAX_SCHEDULER_READ_AHEAD_BYTES = 64 * 1024
