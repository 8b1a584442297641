/*
 * The host side of /guoce/scheduler/1: one stream, re-dialled with backoff when it drops.
 * After each (re)connect it sends hello and then calls `onConnect` so the owner re-registers
 * every task it holds: a scheduler restart costs the swarm one round of registrations, no downloads.
 */
import type { Libp2p } from 'libp2p'
import { multiaddr } from '@multiformats/multiaddr'
import { hostname, loadavg, cpus } from 'node:os'
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { Logger, Startable } from '@guoce/interface'
import { MessageChannel } from './channel.js'
import { SCHEDULER_PROTOCOL, KEEPALIVE_INTERVAL_MS } from './constants.js'
import { peerMessage, schedulerMessage, type PeerMessage, type SchedulerMessage, type WireHostInfo } from './messages.js'

/**
 * Reconnect backoff bounds.
 * @default 100 ms .. 2 s
 */
export const RECONNECT_MIN_MS = 100
export const RECONNECT_MAX_MS = 2_000

/** What a host announces in hello: its role and labels, plus addresses, hostname and load read now. */
export function hostInfo (node: Libp2p, o: { type: WireHostInfo['type'], uploadSlots: number, idc?: string | undefined, location?: string | undefined }): WireHostInfo {
  return {
    type: o.type,
    uploadSlots: o.uploadSlots,
    uploadBps: 0,
    idc: o.idc ?? '',
    location: o.location ?? '',
    addrs: node.getMultiaddrs().map(a => a.bytes),
    hostname: hostname(),
    load: Math.min(1, (loadavg()[0] ?? 0) / Math.max(1, cpus().length))
  }
}

/**
 * A designated seed's proof (Hello.seed_proof): HMAC-SHA256 under the scheduler's seed key of
 * "guoce seed v1\0" + scheduler PeerId + "\0" + seed PeerId. Bound to both Noise-authenticated ids, so a
 * proof seen by anyone is good for no other host and no other scheduler.
 */
export function seedProof (seedKey: Uint8Array, schedulerId: string, seedId: string): Uint8Array {
  return new Uint8Array(createHmac('sha256', seedKey).update(`guoce seed v1\0${schedulerId}\0${seedId}`).digest())
}

/** Constant-time check of a Hello.seed_proof against the ids the connection authenticated. */
export function verifySeedProof (seedKey: Uint8Array, schedulerId: string, seedId: string, proof: Uint8Array | undefined): boolean {
  if (proof == null || proof.byteLength !== 32) return false
  return timingSafeEqual(seedProof(seedKey, schedulerId, seedId), proof)
}

export interface SchedulerClientInit {
  node: Libp2p
  scheduler: string
  host: () => WireHostInfo
  onMessage: (msg: SchedulerMessage) => void
  onConnect: () => void | Promise<void>
  onDisconnect?: () => void
  log: Logger
  /** a designated seed's seed key (`guoce seed --seed-key`): hello then carries its proof (seedProof) */
  seedKey?: Uint8Array
}

export class SchedulerClient implements Startable {
  private channel: MessageChannel<SchedulerMessage, PeerMessage> | undefined
  private stopped = false
  private loop: Promise<void> | undefined
  private readonly log: Logger
  private readonly controller = new AbortController()
  private connectedOnce = Promise.withResolvers<void>()

  constructor (private readonly init: SchedulerClientInit) {
    this.log = init.log.child({ component: 'transfer:scheduler-client' })
  }

  get connected (): boolean { return this.channel != null }
  /** resolves once the first connection is up */
  get ready (): Promise<void> { return this.connectedOnce.promise }

  async start (): Promise<void> {
    this.stopped = false
    this.loop = this.run()
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.controller.abort()
    // abort, not close: a half-close would wait for the scheduler to end its side
    this.channel?.close(new Error('scheduler client stopping'))
    await this.loop?.catch(() => {})
  }

  /** Send if connected; false when not (the next onConnect re-registers state anyway). */
  send (msg: PeerMessage): boolean {
    if (this.channel == null) return false
    void this.channel.send(msg)
    return true
  }

  private async run (): Promise<void> {
    let delay = RECONNECT_MIN_MS
    while (!this.stopped) {
      try {
        const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(5_000)])
        const conn = await this.init.node.dial(multiaddr(this.init.scheduler), { signal })
        const stream = await conn.newStream(SCHEDULER_PROTOCOL, { signal })
        const channel = new MessageChannel<SchedulerMessage, PeerMessage>(stream, m => peerMessage.encode(m), b => schedulerMessage.decode(b))
        // the proof names the scheduler Noise authenticated on this connection, not the one we meant to dial
        const proof = this.init.seedKey != null ? { seedProof: seedProof(this.init.seedKey, conn.remotePeer.toString(), this.init.node.peerId.toString()) } : {}
        await channel.send({ hello: { host: this.init.host(), ...proof } })
        this.channel = channel
        delay = RECONNECT_MIN_MS
        this.log.info('connected to scheduler', { scheduler: this.init.scheduler })
        const keepalive = setInterval(() => { void channel.send({ keepalive: true }) }, KEEPALIVE_INTERVAL_MS)
        try {
          await this.init.onConnect()
          this.connectedOnce.resolve()
          for await (const msg of channel.messages()) {
            if (msg.keepalive === true) continue
            try {
              this.init.onMessage(msg)
            } catch (err) {
              this.log.error('scheduler message handler failed', { err: (err as Error).message })
            }
          }
        } finally {
          clearInterval(keepalive)
          this.channel = undefined
          channel.close()
          this.init.onDisconnect?.()
        }
        if (!this.stopped) this.log.warn('scheduler stream closed; reconnecting')
      } catch (err) {
        if (this.stopped) break
        this.log.debug('scheduler connection failed', { err: (err as Error).message })
      }
      if (this.stopped) break
      await new Promise<void>(resolve => { const t = setTimeout(resolve, delay); t.unref?.() })
      delay = Math.min(RECONNECT_MAX_MS, delay * 2)
    }
  }
}
