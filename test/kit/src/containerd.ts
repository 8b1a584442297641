/**
 * A containerd 1.6 of the test's own (Debian's containerd + runc), with root, state, sockets and plugins
 * under one temp dir (ENVIRONMENT.md), proxy snapshotters, and optionally the CRI plugin; and a distribution
 * registry on 127.0.0.1. `stop()` kills every task, deletes containers, stops containerd, lazily unmounts
 * whatever is left under the dir and removes runc's cgroup directories: call it in afterAll.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { copyFile, mkdir, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { until } from './wait.js'
import { inNetns } from './procs.js'

const exec = promisify(execFile)

export interface ContainerdInit {
  /** Everything goes under here (keep it short: unix socket paths are limited to 107 bytes). */
  dir: string
  /** name -> socket of `[proxy_plugins.NAME] type = "snapshot"`. */
  snapshotters?: Record<string, string>
  /** Enables the CRI plugin, registry hosts from `hostsDir`; with `snapshotter`, that one with snapshot annotations on. */
  cri?: { snapshotter?: string, hostsDir: string }
  /** More configuration (TOML tables), appended as is (e.g. deploy/containerd/config.toml). */
  extra?: string
  /** Run containerd in this network namespace (its pulls go through it), in the host's mount namespace. */
  netns?: string
}

export interface Containerd {
  address: string
  /** `ctr --address ADDRESS [-n NS] ARGS`; rejects on a non-zero exit. */
  ctr: (args: string[], opts?: { namespace?: string, timeoutMs?: number }) => Promise<string>
  /** `run` arguments that keep FIFOs and runc's state under the dir. */
  runArgs: () => string[]
  /** Containers (namespace, id) to kill and delete at stop(), whatever happened. */
  track: (namespace: string, id: string) => void
  log: string[]
  stop: () => Promise<void>
}

export async function startContainerd (init: ContainerdInit): Promise<Containerd> {
  const d = init.dir
  const address = join(d, 'containerd.sock')
  const lines = [
    'version = 2', `root = "${d}/root"`, `state = "${d}/state"`,
    ...(init.cri == null ? ['disabled_plugins = ["io.containerd.grpc.v1.cri"]'] : []),
    `[grpc]\n  address = "${address}"`, `[ttrpc]\n  address = "${address}.ttrpc"`, `[debug]\n  address = "${d}/debug.sock"`,
    `[plugins."io.containerd.internal.v1.opt"]\n  path = "${d}/opt"`
  ]
  if (init.cri != null) {
    lines.push(
      '[plugins."io.containerd.grpc.v1.cri"]\n  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"',
      ...(init.cri.snapshotter != null ? [`[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "${init.cri.snapshotter}"\n  disable_snapshot_annotations = false`] : []),
      `[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${init.cri.hostsDir}"`,
      `[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "${d}/cni/bin"\n  conf_dir = "${d}/cni/conf"`
    )
  }
  for (const [name, socket] of Object.entries(init.snapshotters ?? {})) lines.push(`[proxy_plugins.${name}]\n  type = "snapshot"\n  address = "${socket}"`)
  if (init.extra != null) lines.push(init.extra)
  await mkdir(d, { recursive: true })
  await writeFile(join(d, 'containerd.toml'), lines.join('\n') + '\n')
  const log: string[] = []
  const [cmd, ...args] = inNetns(init.netns, ['containerd', '--config', join(d, 'containerd.toml')], true)
  const proc: ChildProcess = spawn(cmd!, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  proc.stderr!.on('data', (b: Buffer) => { log.push(b.toString()) })
  const tracked: Array<[string, string]> = []
  const ctr = async (args: string[], opts: { namespace?: string, timeoutMs?: number } = {}): Promise<string> => {
    const r = await exec('ctr', ['--address', address, ...(opts.namespace != null ? ['-n', opts.namespace] : []), ...args], { timeout: opts.timeoutMs ?? 60_000, killSignal: 'SIGKILL' })
    return r.stdout
  }
  const stop = async (): Promise<void> => {
    for (const [ns, id] of tracked) {
      await ctr(['task', 'kill', '-s', 'SIGKILL', id], { namespace: ns, timeoutMs: 10_000 }).catch(() => {})
      await until(async () => { try { await ctr(['task', 'delete', '-f', id], { namespace: ns, timeoutMs: 10_000 }); return true } catch (err) { return /not found/.test(String(err)) } }, 'task delete', 10_000, 200).catch(() => {})
      await ctr(['container', 'delete', id], { namespace: ns, timeoutMs: 10_000 }).catch(() => {})
    }
    if (proc.exitCode == null && proc.signalCode == null) {
      proc.kill('SIGTERM')
      await new Promise(resolve => { const t = setTimeout(() => { proc.kill('SIGKILL'); resolve(null) }, 10_000); proc.once('exit', () => { clearTimeout(t); resolve(null) }) })
    }
    const info = await readFile('/proc/self/mountinfo', 'utf8')
    for (const p of info.split('\n').map(l => l.split(' ')[4]).filter((p): p is string => p?.startsWith(d + '/') === true).reverse()) {
      await exec('umount', ['-l', p]).catch(() => {})
    }
    // runc (cgroupfs) leaves /sys/fs/cgroup/<controller>/<namespace>/<id>
    for (const ctl of await readdir('/sys/fs/cgroup').catch(() => [] as string[])) {
      for (const [ns, id] of tracked) await rmdir(join('/sys/fs/cgroup', ctl, ns, id)).catch(() => {})
      for (const ns of new Set(tracked.map(t => t[0]))) await rmdir(join('/sys/fs/cgroup', ctl, ns)).catch(() => {})
    }
  }
  try {
    await until(async () => { try { await ctr(['version'], { timeoutMs: 5_000 }); return true } catch { return false } }, `containerd to answer:\n${log.join('')}`, 30_000, 100)
  } catch (err) { await stop(); throw err }
  return {
    address, ctr, log, stop,
    runArgs: () => ['--fifo-dir', join(d, 'fifo'), '--runc-root', join(d, 'runc')],
    track: (ns, id) => { tracked.push([ns, id]) }
  }
}

/**
 * An OCI image layout at `dir` (tag `tag`) built with umoci: its first layer holds /bin/busybox (static), then each
 * `layers` callback edits a copy of the root file system that becomes the next layer.
 */
export async function busyboxImage (dir: string, tag: string, layers: Array<(rootfs: string) => Promise<void>>): Promise<void> {
  await exec('umoci', ['init', '--layout', dir])
  await exec('umoci', ['new', '--image', `${dir}:${tag}`])
  for (const [i, edit] of layers.entries()) {
    const bundle = `${dir}.bundle-${i}`
    await exec('umoci', ['unpack', '--image', `${dir}:${tag}`, bundle])
    if (i === 0) {
      await mkdir(join(bundle, 'rootfs', 'bin'), { recursive: true })
      await copyFile('/bin/busybox', join(bundle, 'rootfs', 'bin', 'busybox'))
    }
    await edit(join(bundle, 'rootfs'))
    await exec('umoci', ['repack', '--image', `${dir}:${tag}`, bundle])
    await rm(bundle, { recursive: true, force: true })
  }
}
