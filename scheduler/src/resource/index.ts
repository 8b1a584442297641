/*
 * Soft state only: everything here is rebuilt from the hosts' (re-)registrations after a restart.
 * A Host owns its channel; a Task owns its Peers; Peer.parents/children are the DAG edges.
 */
import { Bitmap } from '@guoce/content'
import type { SchedulerMessage, WireHostInfo, WireTaskRef } from '@guoce/transfer'
import type { PeerState, TaskInfo } from '@guoce/interface'

export class Host {
  readonly peers = new Map<string, Peer>()
  /** `sink` delivers a message to the host (its stream, or a simulator) */
  constructor (readonly id: string, public info: WireHostInfo, private readonly sink: (msg: SchedulerMessage) => void, readonly close: () => void = () => {}) {}
  get isSeed (): boolean { return this.info.type === 'seed' }
  get uploadSlots (): number { return this.info.uploadSlots }
  /** children this host currently feeds, over all tasks */
  get childCount (): number {
    let n = 0
    for (const p of this.peers.values()) n += p.children.size
    return n
  }

  send (msg: SchedulerMessage): void { this.sink(msg) }
}

export class Peer {
  bitmap: Bitmap | undefined
  state: PeerState = 'pending'
  readonly parents = new Set<Peer>()
  readonly children = new Set<Peer>()
  /** parents this child reported as bad */
  readonly blamed = new Set<string>()
  /** children that reported this peer */
  readonly reportedBy = new Set<string>()
  /** may announce task info and piece digests */
  isSource = false
  scheduleRetries = 0
  /** bitmap sent before the task's layout was known (a re-registration after a scheduler restart) */
  rawBitmap: Uint8Array | undefined

  constructor (readonly host: Host, readonly task: Task) {}
  get id (): string { return this.host.id }
  get bad (): boolean { return this.reportedBy.size >= 2 }
}

export class Task {
  info: TaskInfo | undefined
  digests: Array<Uint8Array | undefined> = []
  readonly peers = new Map<string, Peer>()
  /** host asked to seed this task, while it runs */
  seeding: string | undefined
  /** source attempts that failed with a retryable error */
  sourceFailures = 0

  constructor (readonly id: string, public ref: WireTaskRef) {}

  setInfo (info: TaskInfo): void {
    this.info = info
    this.digests = new Array(info.pieceCount).fill(undefined)
    for (const p of this.peers.values()) {
      if (p.bitmap == null || p.bitmap.size !== info.pieceCount) p.bitmap = new Bitmap(info.pieceCount, p.rawBitmap != null && p.rawBitmap.length === Math.ceil(info.pieceCount / 8) ? p.rawBitmap : undefined)
      p.rawBitmap = undefined
    }
  }

  /** true when the peers still here hold every piece between them */
  get covered (): boolean {
    if (this.info == null) return false
    const union = new Bitmap(this.info.pieceCount)
    for (const p of this.peers.values()) {
      if (p.bitmap == null || p.state === 'failed' || p.state === 'left') continue
      for (let i = 0; i < union.bytes.length; i++) union.bytes[i] = (union.bytes[i] ?? 0) | (p.bitmap.bytes[i] ?? 0)
    }
    return new Bitmap(this.info.pieceCount, union.bytes).full
  }
}
