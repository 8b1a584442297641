/*
 * The daemon's Prometheus metrics (prom-client, one Registry per daemon so several daemons can live in
 * one process). Counters and gauges read the daemon's own counts when scraped; reads are timed as they
 * happen: `guoce_peer_read_seconds{priority}`, from the call to the verified bytes (a ranged read) or to
 * the first chunk (a stream).
 * prom-client rather than hand-written exposition: the text format, escaping, histogram buckets and
 * their cumulative counts are its job, and consumers (the mirror, the snapshotter) register their own.
 */
import { Registry, Counter, Gauge, Histogram } from 'prom-client'
import type { ReadPriority } from '@guoce/interface'
import type { PeerDaemon } from './daemon.js'

/** Read latency buckets, seconds: from a page-cache hit (100 µs) to a read that waited on the origin. */
export const READ_SECONDS_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

export interface DaemonMetrics {
  registry: Registry
  /** one read settled with its bytes after `seconds` */
  observeRead: (priority: ReadPriority, seconds: number) => void
}

/** A counter whose value is read from `get` when scraped (the daemon keeps the count itself). */
function countedBy (registry: Registry, name: string, help: string, labelNames: string[], get: () => Array<[Record<string, string>, number]>): void {
  const c: Counter<string> = new Counter({
    name, help, labelNames, registers: [registry],
    collect () { c.reset(); for (const [labels, v] of get()) c.inc(labels, v) }
  })
}

export function daemonMetrics (): DaemonMetrics & { bind: (d: PeerDaemon) => void } {
  const registry = new Registry()
  const reads = new Histogram({ name: 'guoce_peer_read_seconds', help: 'Time a read waited for verified bytes (a stream: for its first chunk), by priority', labelNames: ['priority'], buckets: READ_SECONDS_BUCKETS, registers: [registry] })
  return {
    registry,
    observeRead: (priority, seconds) => { reads.observe({ priority }, seconds) },
    bind (d) {
      const s = d.stats
      countedBy(registry, 'guoce_peer_download_bytes_total', 'Verified bytes this daemon downloaded, by where they came from', ['source'], () => [[{ source: 'peer' }, s.peerBytes], [{ source: 'origin' }, s.sourceBytes]])
      countedBy(registry, 'guoce_peer_upload_bytes_total', 'Piece bytes this daemon served to children', [], () => [[{}, s.uploadBytes]])
      countedBy(registry, 'guoce_peer_tasks_started_total', 'Downloads started', [], () => [[{}, s.tasksStarted]])
      countedBy(registry, 'guoce_peer_blamed_parents_total', 'Parents blamed (bad digest, stall, protocol violation)', [], () => [[{}, s.blamedParents]])
      countedBy(registry, 'guoce_peer_busy_parents_total', 'Stall checks that found a parent busy (busy frames, no piece bytes): kept, not blamed', [], () => [[{}, s.busyParents]])
      countedBy(registry, 'guoce_peer_silent_parents_total', 'Parent connections silent for PARENT_STALL_MS while the parent host sent on others: pieces asked elsewhere, not blamed', [], () => [[{}, s.silentParents]])
      countedBy(registry, 'guoce_peer_parent_connections_total', 'Piece connections opened to parents, by channel', ['channel'], () => Object.entries(s.parentConnections).map(([channel, n]) => [{ channel }, n]))
      countedBy(registry, 'guoce_peer_parent_lists_total', 'Parent lists received, by mode', ['mode'], () => [[{ mode: 'chain' }, s.parentLists.chain], [{ mode: 'striped' }, s.parentLists.striped]])
      const waiting: Gauge<string> = new Gauge({ name: 'guoce_peer_reads_waiting', help: 'Reads waiting for pieces or layouts', registers: [registry], collect () { waiting.set(d.readsWaiting) } })
      const connected: Gauge<string> = new Gauge({ name: 'guoce_peer_scheduler_connected', help: '1 while the scheduler stream is up', registers: [registry], collect () { connected.set(d.client.connected ? 1 : 0) } })
    }
  }
}
