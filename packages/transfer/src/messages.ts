/**
 * Wire schema of /guoce/scheduler/1 and /guoce/piece/1 requests: length-prefixed protobuf
 * (proto3), parsed once at load time. doc/PROTOCOL.md describes the same messages.
 */
import protobuf from 'protobufjs'
import { ProtocolError, type ErrorInfo } from '@guoce/interface'

export const PROTO = `
syntax = "proto3";
package guoce.v1;

message ErrorInfo { string name = 1; string code = 2; string message = 3; uint32 status = 4; }
message TaskInfo { uint64 content_length = 1; uint32 piece_length = 2; uint32 piece_count = 3; }
message HostInfo {
  string type = 1;            // "normal" | "seed"
  uint32 upload_slots = 2;    // concurrent children it will feed
  uint64 upload_bps = 3;      // uplink bandwidth, bytes/s (0 = unknown)
  string idc = 4;
  string location = 5;        // "|"-separated, most significant first
  repeated bytes addrs = 6;   // multiaddrs (binary)
  string hostname = 7;
  double load = 8;            // 0..1
}

// peer -> scheduler
message Hello { HostInfo host = 1; bytes seed_proof = 2; }   // seed_proof: designated seeds only (doc/SECURITY.md)
message Register {
  string task_id = 1; string url = 2; map<string, string> headers = 3; string digest = 4; string tag = 5;
  bytes bitmap = 6;           // pieces already held (re-registration, resume)
  bool completed = 7;
  string version = 8;         // origin validator of a URL task (part of its id)
  string credentials = 9;     // credentialHash of the request (part of its id); headers, when sent, must hash to it
  bool lazy = 10;             // ranged reads: fetch only the pieces asked for (want), not the whole task
  uint32 piece_length = 11;   // the piece length the request names (part of its id); 0 = chosen from the content length
}
message PieceDone { string task_id = 1; repeated uint32 numbers = 2; repeated bytes digests = 3; }
message SourceInfo { string task_id = 1; TaskInfo info = 2; }
message PeerResult { string task_id = 1; bool success = 2; ErrorInfo error = 3; }
message BadParent { string task_id = 1; string parent = 2; string reason = 3; }
message NeedParents { string task_id = 1; }
message Leave { string task_id = 1; }
message Want { string task_id = 1; repeated uint32 numbers = 2; uint32 priority = 3; }   // pieces a read waits for that no parent holds
message PeerMessage {
  Hello hello = 1; Register register = 2; PieceDone piece_done = 3; SourceInfo source_info = 4;
  PeerResult result = 5; BadParent bad_parent = 6; NeedParents need_parents = 7; Leave leave = 8; bool keepalive = 9;
  Want want = 10;
}

// scheduler -> peer
message Parent {
  string peer_id = 1; repeated bytes addrs = 2; bytes bitmap = 3;
  uint32 stripes = 4;         // bit s: primary for the pieces n with n mod stripe_count = s
  bool seed = 5;              // the task's designated seed: a child waits out its silence, never blames it for one
}
message Parents {
  string task_id = 1; repeated Parent parents = 2;
  uint32 stripe_count = 3;    // 0 = chain: the first parent is the primary, the others backups
}
message Have { string task_id = 1; string peer_id = 2; repeated uint32 numbers = 3; }
message Digests { string task_id = 1; repeated uint32 numbers = 2; repeated bytes digests = 3; }
message TaskInfoMsg { string task_id = 1; TaskInfo info = 2; }
message BackToSource { string task_id = 1; string reason = 2; }
message SeedOrder {
  string task_id = 1; string url = 2; map<string, string> headers = 3; string digest = 4; string tag = 5; string version = 6;
  bool lazy = 7;              // learn the layout, then fetch only the pieces wanted (numbers, later orders); false = the whole task
  repeated uint32 numbers = 8; // pieces someone waits for: fetched first
  uint32 piece_length = 9;    // the layout's piece length, when the task's request names one
}
message TaskFailed { string task_id = 1; ErrorInfo error = 2; }
message SchedulerMessage {
  TaskInfoMsg task_info = 1; Parents parents = 2; Have have = 3; Digests digests = 4;
  BackToSource back_to_source = 5; SeedOrder seed = 6; TaskFailed failed = 7; bool keepalive = 8;
}

// child -> parent on /guoce/piece/1
message PieceRequest {
  string task_id = 1; repeated uint32 numbers = 2; uint32 priority = 3;
  bool fetch = 4;             // pieces not held are answered once held: a task's seed fetches them (PieceProvider.whenHeld)
}

// child -> parent on /guoce/piece-data/1, then one answer
message DataChannelRequest { uint32 mode = 1; }   // 1 = secure (AES-256-GCM records), 2 = integrity-only
message DataChannelOffer { uint32 port = 1; bytes token = 2; bytes secret = 3; string refused = 4; }
`

export interface WireTaskInfo { contentLength: number, pieceLength: number, pieceCount: number }
export interface WireHostInfo {
  type: 'normal' | 'seed', uploadSlots: number, uploadBps: number, idc: string, location: string,
  addrs: Uint8Array[], hostname: string, load: number
}
export interface WireTaskRef { url: string, headers?: Record<string, string>, digest?: string, tag?: string, version?: string, pieceLength?: number }

export interface PeerMessage {
  hello?: { host: WireHostInfo, seedProof?: Uint8Array }
  register?: { taskId: string, bitmap?: Uint8Array, completed?: boolean, credentials?: string, lazy?: boolean } & WireTaskRef
  pieceDone?: { taskId: string, numbers: number[], digests?: Uint8Array[] }
  sourceInfo?: { taskId: string, info: WireTaskInfo }
  result?: { taskId: string, success: boolean, error?: ErrorInfo }
  badParent?: { taskId: string, parent: string, reason: string }
  needParents?: { taskId: string }
  leave?: { taskId: string }
  keepalive?: boolean
  want?: { taskId: string, numbers: number[], priority?: number }
}

/** `stripes`: bit s set = the primary for the pieces n with n mod stripeCount = s (forest mode) */
export interface WireParent { peerId: string, addrs: Uint8Array[], bitmap?: Uint8Array, stripes?: number, seed?: boolean }
export interface SchedulerMessage {
  taskInfo?: { taskId: string, info: WireTaskInfo }
  /** `stripeCount`: stripes of the task (0 or absent = chain mode) */
  parents?: { taskId: string, parents: WireParent[], stripeCount?: number }
  have?: { taskId: string, peerId: string, numbers: number[] }
  digests?: { taskId: string, numbers: number[], digests: Uint8Array[] }
  backToSource?: { taskId: string, reason: string }
  seed?: { taskId: string, lazy?: boolean, numbers?: number[] } & WireTaskRef
  failed?: { taskId: string, error: ErrorInfo }
  keepalive?: boolean
}

export interface PieceRequest { taskId: string, numbers: number[], priority: number, fetch?: boolean }
export interface DataChannelRequest { mode: number }
export interface DataChannelOffer { port?: number, token?: Uint8Array, secret?: Uint8Array, refused?: string }

/** Read priority: on-demand reads outrank prefetch, prefetch outranks background fills. */
export const Priority = { ON_DEMAND: 0, PREFETCH: 1, BACKGROUND: 2 } as const

const root = protobuf.parse(PROTO, { keepCase: false }).root
const types = {
  peer: root.lookupType('guoce.v1.PeerMessage'),
  scheduler: root.lookupType('guoce.v1.SchedulerMessage'),
  pieceRequest: root.lookupType('guoce.v1.PieceRequest'),
  dataChannelRequest: root.lookupType('guoce.v1.DataChannelRequest'),
  dataChannelOffer: root.lookupType('guoce.v1.DataChannelOffer')
}
const toObjectOpts: protobuf.IConversionOptions = { longs: Number, arrays: true, defaults: false }

function codec<T extends object> (type: protobuf.Type): { encode(m: T): Uint8Array, decode(b: Uint8Array): T } {
  return {
    encode (m: T): Uint8Array {
      return type.encode(type.fromObject(m as Record<string, unknown>)).finish()
    },
    decode (b: Uint8Array): T {
      try {
        return type.toObject(type.decode(b), toObjectOpts) as T
      } catch (err) {
        throw new ProtocolError(`undecodable ${type.name}: ${(err as Error).message}`)
      }
    }
  }
}

export const peerMessage = codec<PeerMessage>(types.peer)
export const schedulerMessage = codec<SchedulerMessage>(types.scheduler)
export const pieceRequest = codec<PieceRequest>(types.pieceRequest)
export const dataChannelRequest = codec<DataChannelRequest>(types.dataChannelRequest)
export const dataChannelOffer = codec<DataChannelOffer>(types.dataChannelOffer)
