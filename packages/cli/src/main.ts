/**
 * The `guoce` command: parses options and wires the parts; nothing else lives here.
 */
import { join, resolve } from 'node:path'
import { InvalidParametersError, type Logger } from '@guoce/interface'
import { parse, defaultHome, hostPort, durationMs, sizeBytes, pieceChannel, count } from './args.js'
import type { Running, SnapshotterDaemon, SnapshotterOptions, MirrorOptions } from './services.js'
/** @guoce/registry-mirror's DEFAULT_MIRROR_PORT, not imported here: `guoce get` loads no fastify */
const DEFAULT_MIRROR_PORT = 65002

const USAGE = `guoce: P2P content distribution and lazy-loading images

Usage: guoce <command> [options]

Commands:
  get URL -O FILE      download a file through the swarm
  get hf://ORG/REPO[/PATH][@REV] -O DIR
                       download a model repository (or one file or folder of it) from a Hugging Face hub
  get oci://REGISTRY/REPO:TAG -O DIR
                       download model data stored as an OCI artifact (a file per layer, by its title)
  get URL -O NEW --seed-from OLD
                       a delta update: only the chunks of URL that OLD lacks (URL.gcidx lists them)
  index FILE           write FILE.gcidx, the content-defined chunk index delta updates use
  import FILE          put a local file into the swarm (named by its sha256)
  export ID -O FILE    get imported content back (ID: sha256:DIGEST, or a task id this daemon knows)
  up                   scheduler + seed peer + peer daemon in one process (embedded defaults)
  scheduler            run the scheduler
  seed                 run a seed peer
  daemon               run a peer daemon (P2P node + local API)
  image                convert | inspect | check | mount | pull | umount lazy images
  mirror hosts         write containerd's hosts.toml that sends a registry's pulls to the mirror

Every command takes --help and --json. Logs are JSON lines on stderr (GUOCE_LOG=debug|info|warn|error).
`

const SCHEDULER_USAGE = `Usage: guoce scheduler [--listen MULTIADDR] [--data DIR] [--cluster-key FILE | --open] [--chain-max-peers N] [--json]

  --listen MULTIADDR   where to listen (default /ip4/0.0.0.0/tcp/65003)
  --data DIR           identity key, cluster.key and seed.key live here (default $GUOCE_HOME/scheduler)
  --cluster-key FILE   cluster key to use instead of <data>/cluster.key (created on first start)
  --open               no cluster key: any node that reaches the port may join (warned)
  --chain-max-peers N  peers of a task that form one chain; a bigger swarm gets striped trees (default 16)
Prints the multiaddr it listens on, with /p2p/PEERID, and the paths of the cluster key and the seed key.
`
const SEED_USAGE = `Usage: guoce seed --scheduler MULTIADDR (--cluster-key FILE | --open) [--seed-key FILE] [--data DIR] [--listen MULTIADDR]
                  [--origin-timeout 30s] [--quota SIZE] [--piece-channel M] [--json]

  --cluster-key FILE   the scheduler's cluster.key (needed to connect to any node of the cluster)
  --open               the cluster is open (scheduler --open)
  --seed-key FILE      the scheduler's seed.key: makes this a designated seed (else it joins as a normal host)
`
const SNAPSHOTTER_HELP = `
  --snapshotter-socket PATH  serve containerd's snapshots API on this unix socket (root only: it mounts);
                       containerd: [proxy_plugins.guoce] type = "snapshot" address = PATH (deploy/containerd/)
  --snapshotter-root DIR     snapshots and their metadata (default <data>/snapshotter)
  --snapshotter-layout DIR   an OCI layout of converted images (guoce image convert --target oci:DIR):
                       their layers are mounted from its blobs instead of unpacked (repeatable). Without
                       it, layers of converted images are mounted lazily from their registry: chunks are
                       fetched through this daemon as containers read them (node chunk store <data>/chunks)
  --snapshotter-insecure R   lazy layers: ask registry R (HOST:PORT) over plain http (loopback registries
                       always are); repeatable. containerd needs the same in its hosts.toml
`
const DAEMON_USAGE = `Usage: guoce daemon --scheduler MULTIADDR (--cluster-key FILE | --open) [--data DIR] [--api HOST:PORT] [--listen MULTIADDR]
                    [--origin-timeout 30s] [--read-timeout 60s] [--idc NAME] [--location A|B|C] [--quota SIZE] [--piece-channel M]
                    [--snapshotter-socket PATH [--snapshotter-root DIR] [--snapshotter-layout DIR]... [--snapshotter-insecure R]...] [--json]

  --cluster-key FILE   the scheduler's cluster.key (needed to connect to any node of the cluster)
  --open               the cluster is open (scheduler --open)

  --read-timeout D     longest a read of a task's content waits for one piece before it fails (default 60s)
  --api HOST:PORT      local API (default 127.0.0.1:65001): a loopback address, or unix:PATH (a 0600 socket)
  --quota SIZE         most task data kept (e.g. 50GiB); least recently used tasks are evicted
  --piece-channel M    secure (default: AES-256-GCM direct TCP channel keyed over Noise) | stream (the
                       Noise-secured libp2p stream) | integrity (clear bytes, still sha256-verified; opt-in)
  --mirror HOST:PORT   serve the registry mirror there (loopback only; off by default for daemon)
  --mirror-upstream R  registry a mirror request goes to when it names none (containerd names it: ?ns=)
  --mirror-insecure R  ask registry R over plain http (loopback registries always are); repeatable
  --mirror-max-manifest SIZE  largest manifest the mirror reads from an upstream (default 4MiB)
${SNAPSHOTTER_HELP}`
const MIRROR_USAGE = `Usage: guoce mirror hosts --registry R [--dir D] [--mirror HOST:PORT] [--insecure] [--json]

Writes D/R/hosts.toml (D defaults to /etc/containerd/certs.d): containerd then pulls R through the registry
mirror at HOST:PORT (default 127.0.0.1:${DEFAULT_MIRROR_PORT}, the one \`guoce up\` serves). containerd's CRI reads
it when its registry config_path is D; \`ctr images pull --hosts-dir D\` too. --insecure: R itself (containerd's
fallback when the mirror fails) is http, as loopback registries always are.
`
const UP_USAGE = `Usage: guoce up [--data DIR] [--api HOST:PORT] [--mirror HOST:PORT|off] [--listen-host IP] [--scheduler-port N] [--open] [--origin-timeout 30s] [--quota SIZE] [--piece-channel M]
                [--snapshotter-socket PATH [--snapshotter-root DIR] [--snapshotter-layout DIR]... [--snapshotter-insecure R]...] [--json]

Runs a scheduler, a seed peer and a peer daemon in one process on embedded defaults, data under
--data (default $GUOCE_HOME or ~/.guoce); the seed and the daemon use the scheduler's cluster key and
seed key (--open: no cluster key). Prints its endpoints; other machines join with
  guoce daemon --scheduler <scheduler multiaddr> --cluster-key <copy of the cluster key>
and \`guoce get --daemon <api>\` downloads through it. The registry mirror listens on --mirror (default
127.0.0.1:${DEFAULT_MIRROR_PORT}; \`off\` for none): \`guoce mirror hosts --registry R\` points containerd at it.
${SNAPSHOTTER_HELP}`

const SNAPSHOTTER_OPTIONS = { 'snapshotter-socket': { type: 'string' }, 'snapshotter-root': { type: 'string' }, 'snapshotter-layout': { type: 'string', multiple: true }, 'snapshotter-insecure': { type: 'string', multiple: true } } as const

/** The snapshotter options of `--snapshotter-socket` (checked before anything starts); undefined without it. */
function snapshotterOptions (v: Record<string, unknown>, data: string): SnapshotterOptions | undefined {
  const socket = v['snapshotter-socket'] as string | undefined
  if (socket == null) {
    if (v['snapshotter-root'] != null || v['snapshotter-layout'] != null || v['snapshotter-insecure'] != null) throw new InvalidParametersError('--snapshotter-root, --snapshotter-layout and --snapshotter-insecure need --snapshotter-socket')
    return undefined
  }
  if (socket === '') throw new InvalidParametersError('--snapshotter-socket needs a path')
  const layouts = (v['snapshotter-layout'] as string[] | undefined)?.map(l => resolve(l))
  const insecure = v['snapshotter-insecure'] as string[] | undefined
  if (insecure?.some(r => r === '' || /[/\s]/.test(r)) === true) throw new InvalidParametersError('--snapshotter-insecure takes a registry host (HOST or HOST:PORT)')
  return { socket: resolve(socket), root: resolve((v['snapshotter-root'] as string | undefined) ?? join(data, 'snapshotter')), layouts, insecure }
}

async function startSnapshotterIf (o: SnapshotterOptions | undefined, log: Logger, daemon: SnapshotterDaemon): Promise<(Running & { socket: string }) | undefined> {
  if (o == null) return undefined
  const { startSnapshotterService } = await import('./services.js')
  return await startSnapshotterService(o, log, daemon)
}

const MIRROR_OPTIONS = { mirror: { type: 'string' }, 'mirror-upstream': { type: 'string' }, 'mirror-insecure': { type: 'string', multiple: true }, 'mirror-max-manifest': { type: 'string' } } as const

/** The mirror options of daemon and up: `--mirror HOST:PORT` (loopback) or `off`; `fallback` when not given. */
function mirrorOptions (v: Record<string, unknown>, fallback: string | undefined): MirrorOptions | undefined {
  const at = (v.mirror as string | undefined) ?? fallback
  if (at == null || at === 'off') return undefined
  return { ...hostPort(at, '--mirror'), upstream: v['mirror-upstream'] as string | undefined, insecure: v['mirror-insecure'] as string[] | undefined, maxManifestBytes: sizeBytes(v['mirror-max-manifest'] as string | undefined, '--mirror-max-manifest') }
}

function out (json: boolean, obj: Record<string, unknown>, text: string): void {
  process.stdout.write(json ? JSON.stringify(obj) + '\n' : text + '\n')
}

async function runUntilSignal (services: Running[]): Promise<number> {
  const { promise, resolve } = Promise.withResolvers<string>()
  process.once('SIGINT', () => { resolve('SIGINT') })
  process.once('SIGTERM', () => { resolve('SIGTERM') })
  await promise
  const force = setTimeout(() => { process.exit(1) }, 10_000)
  force.unref()
  for (const s of services.reverse()) await s.stop().catch(() => {})
  // services are stopped; do not wait for idle sockets of other parties to time out
  process.exit(0)
}

export async function main (argv: string[]): Promise<number | undefined> {
  const [cmd, ...rest] = argv
  if (cmd == null || cmd === '--help' || cmd === '-h' || cmd === 'help') { process.stdout.write(USAGE); return cmd == null ? 2 : 0 }
  // services load libp2p and fastify; `guoce get` needs neither, so load them only when asked
  const { startScheduler, startSeed, startDaemon, logger } = cmd === 'get' || cmd === 'image' || cmd === 'import' || cmd === 'export' || cmd === 'index' ? {} as typeof import('./services.js') : await import('./services.js')
  switch (cmd) {
    // hf:// names a model repository (many files), anything else one file
    case 'get':
      if (rest.some(a => a.startsWith('hf://'))) return await (await import('./hf.js')).getHf(rest)
      if (rest.some(a => a.startsWith('oci://'))) return await (await import('./artifact.js')).getOci(rest)
      return await (await import('./get.js')).get(rest)
    case 'image': return await (await import('./image.js')).image(rest)
    case 'index': return await (await import('./delta.js')).indexCmd(rest)
    case 'import': return await (await import('./swarm.js')).importCmd(rest)
    case 'export': return await (await import('./swarm.js')).exportCmd(rest)
    case 'scheduler': {
      const { values: v } = parse(rest, { listen: { type: 'string' }, data: { type: 'string' }, 'chain-max-peers': { type: 'string' }, 'cluster-key': { type: 'string' }, open: { type: 'boolean' } })
      if (v.help === true) { process.stdout.write(SCHEDULER_USAGE); return 0 }
      const json = v.json === true
      const s = await startScheduler({ data: (v.data as string | undefined) ?? join(defaultHome(), 'scheduler'), listen: (v.listen as string | undefined) ?? '/ip4/0.0.0.0/tcp/65003', log: logger(json, 'info'), chainMaxPeers: count(v['chain-max-peers'] as string | undefined, '--chain-max-peers'), clusterKey: v['cluster-key'] as string | undefined, open: v.open === true })
      out(json, { event: 'ready', service: 'scheduler', addr: s.addr, addrs: s.addrs, clusterKey: s.clusterKey ?? null, seedKey: s.seedKey },
        `scheduler listening on ${s.addrs.join(' ')}\n  cluster key  ${s.clusterKey ?? '(none: open cluster)'}\n  seed key     ${s.seedKey}`)
      return await runUntilSignal([s])
    }
    case 'seed': {
      const { values: v } = parse(rest, { scheduler: { type: 'string' }, data: { type: 'string' }, listen: { type: 'string' }, 'origin-timeout': { type: 'string' }, quota: { type: 'string' }, 'piece-channel': { type: 'string' }, 'cluster-key': { type: 'string' }, open: { type: 'boolean' }, 'seed-key': { type: 'string' } })
      if (v.help === true) { process.stdout.write(SEED_USAGE); return 0 }
      if (typeof v.scheduler !== 'string') throw new InvalidParametersError('--scheduler MULTIADDR is required')
      const json = v.json === true
      const s = await startSeed({ clusterKey: v['cluster-key'] as string | undefined, open: v.open === true, seedKey: v['seed-key'] as string | undefined, data: (v.data as string | undefined) ?? join(defaultHome(), 'seed'), listen: (v.listen as string | undefined) ?? '/ip4/0.0.0.0/tcp/0', scheduler: v.scheduler, log: logger(json, 'info'), originTimeoutMs: durationMs(v['origin-timeout'] as string | undefined, '--origin-timeout'), quotaBytes: sizeBytes(v.quota as string | undefined, '--quota'), pieceChannel: pieceChannel(v['piece-channel'] as string | undefined) })
      await s.seed.ready
      out(json, { event: 'ready', service: 'seed', peerId: s.node.peerId.toString(), addrs: s.node.getMultiaddrs().map(String) }, `seed peer ${s.node.peerId.toString()} joined ${v.scheduler}`)
      return await runUntilSignal([s])
    }
    case 'daemon': {
      const { values: v } = parse(rest, { scheduler: { type: 'string' }, data: { type: 'string' }, api: { type: 'string' }, listen: { type: 'string' }, 'origin-timeout': { type: 'string' }, 'read-timeout': { type: 'string' }, idc: { type: 'string' }, location: { type: 'string' }, quota: { type: 'string' }, 'piece-channel': { type: 'string' }, 'cluster-key': { type: 'string' }, open: { type: 'boolean' }, ...SNAPSHOTTER_OPTIONS, ...MIRROR_OPTIONS })
      if (v.help === true) { process.stdout.write(DAEMON_USAGE); return 0 }
      if (typeof v.scheduler !== 'string') throw new InvalidParametersError('--scheduler MULTIADDR is required')
      const json = v.json === true
      const log = logger(json, 'info')
      const snapOpts = snapshotterOptions(v, (v.data as string | undefined) ?? join(defaultHome(), 'daemon'))
      const d = await startDaemon({
        clusterKey: v['cluster-key'] as string | undefined,
        open: v.open === true,
        data: (v.data as string | undefined) ?? join(defaultHome(), 'daemon'),
        listen: (v.listen as string | undefined) ?? '/ip4/0.0.0.0/tcp/0',
        scheduler: v.scheduler,
        api: hostPort((v.api as string | undefined) ?? '127.0.0.1:65001', '--api'),
        log,
        originTimeoutMs: durationMs(v['origin-timeout'] as string | undefined, '--origin-timeout'),
        readTimeoutMs: durationMs(v['read-timeout'] as string | undefined, '--read-timeout'),
        idc: v.idc as string | undefined,
        location: v.location as string | undefined,
        quotaBytes: sizeBytes(v.quota as string | undefined, '--quota'),
        pieceChannel: pieceChannel(v['piece-channel'] as string | undefined),
        mirror: mirrorOptions(v, undefined)
      })
      const chunkDir = v.data != null ? join(v.data as string, 'chunks') : join(defaultHome(), 'chunks')
      const snap = await startSnapshotterIf(snapOpts, log, { apiUrl: d.apiUrl, chunkDir, metrics: d.daemon.metrics.registry, reader: d.daemon.reader })
      out(json, { event: 'ready', service: 'daemon', api: d.apiUrl, mirror: d.mirrorUrl ?? null, peerId: d.node.peerId.toString(), addrs: d.node.getMultiaddrs().map(String), snapshotter: snap?.socket ?? null },
        `daemon ${d.node.peerId.toString()} api ${d.apiUrl}${d.mirrorUrl != null ? ` mirror ${d.mirrorUrl}` : ''}${snap != null ? `\nsnapshotter ${snap.socket}` : ''}`)
      return await runUntilSignal(snap != null ? [d, snap] : [d])
    }
    case 'up': {
      const { values: v } = parse(rest, { data: { type: 'string' }, api: { type: 'string' }, 'listen-host': { type: 'string' }, 'scheduler-port': { type: 'string' }, 'origin-timeout': { type: 'string' }, quota: { type: 'string' }, 'piece-channel': { type: 'string' }, open: { type: 'boolean' }, ...SNAPSHOTTER_OPTIONS, ...MIRROR_OPTIONS })
      if (v.help === true) { process.stdout.write(UP_USAGE); return 0 }
      const json = v.json === true
      const data = (v.data as string | undefined) ?? defaultHome()
      const host = (v['listen-host'] as string | undefined) ?? '0.0.0.0'
      const log = logger(json, 'info')
      const originTimeoutMs = durationMs(v['origin-timeout'] as string | undefined, '--origin-timeout')
      const quotaBytes = sizeBytes(v.quota as string | undefined, '--quota')
      const channel = pieceChannel(v['piece-channel'] as string | undefined)
      const open = v.open === true
      const snapOpts = snapshotterOptions(v, data)
      const sched = await startScheduler({ data: join(data, 'scheduler'), listen: `/ip4/${host}/tcp/${(v['scheduler-port'] as string | undefined) ?? '65003'}`, log, open })
      const membership = open ? { open } : { clusterKey: sched.clusterKey }
      const seed = await startSeed({ ...membership, seedKey: sched.seedKey, data: join(data, 'seed'), listen: `/ip4/${host}/tcp/0`, scheduler: sched.addr, log, originTimeoutMs, quotaBytes, pieceChannel: channel })
      const daemon = await startDaemon({ ...membership, data: join(data, 'daemon'), listen: `/ip4/${host}/tcp/0`, scheduler: sched.addr, api: hostPort((v.api as string | undefined) ?? '127.0.0.1:65001', '--api'), log, originTimeoutMs, quotaBytes, pieceChannel: channel, mirror: mirrorOptions(v, `127.0.0.1:${DEFAULT_MIRROR_PORT}`) })
      await seed.seed.ready
      await daemon.daemon.client.ready
      const snap = await startSnapshotterIf(snapOpts, log, { apiUrl: daemon.apiUrl, chunkDir: join(data, 'chunks'), metrics: daemon.daemon.metrics.registry, reader: daemon.daemon.reader })
      out(json, { event: 'ready', service: 'up', scheduler: sched.addr, schedulerAddrs: sched.addrs, api: daemon.apiUrl, mirror: daemon.mirrorUrl ?? null, data, clusterKey: sched.clusterKey ?? null, seedKey: sched.seedKey, snapshotter: snap?.socket ?? null },
        `guoce up\n  scheduler    ${sched.addrs.join('\n               ')}\n  api          ${daemon.apiUrl}\n  mirror       ${daemon.mirrorUrl ?? '(off)'}\n  data         ${data}\n` +
        `  cluster key  ${sched.clusterKey ?? '(none: open cluster)'}\n  seed key     ${sched.seedKey}\n` +
        (snap != null ? `  snapshotter  ${snap.socket}\n` : '') +
        `join:  guoce daemon --scheduler ${sched.addr} ${open ? '--open' : '--cluster-key <copy of the cluster key>'}\nget:   guoce get --daemon ${daemon.apiUrl} URL -O FILE`)
      return await runUntilSignal(snap != null ? [sched, seed, daemon, snap] : [sched, seed, daemon])
    }
    case 'mirror': {
      const [sub, ...args] = rest
      const { values: v } = parse(args, { registry: { type: 'string' }, dir: { type: 'string' }, mirror: { type: 'string' }, insecure: { type: 'boolean' } })
      if (v.help === true || sub !== 'hosts') { process.stdout.write(MIRROR_USAGE); return v.help === true ? 0 : 2 }
      if (typeof v.registry !== 'string') throw new InvalidParametersError('--registry R is required')
      const m = hostPort((v.mirror as string | undefined) ?? `127.0.0.1:${DEFAULT_MIRROR_PORT}`, '--mirror')
      const { writeHostsToml } = await import('@guoce/registry-mirror')
      const file = await writeHostsToml((v.dir as string | undefined) ?? '/etc/containerd/certs.d', v.registry, `http://${m.host.includes(':') ? `[${m.host}]` : m.host}:${m.port}`, { insecure: v.insecure === true ? [v.registry] : [] })
      out(v.json === true, { event: 'written', file }, `wrote ${file}`)
      return 0
    }
    default:
      process.stderr.write(`guoce: error: unknown command "${cmd}"\n${USAGE}`)
      return 2
  }
}
